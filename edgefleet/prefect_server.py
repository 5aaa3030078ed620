"""A local Prefect API server for one job (``make demo``, tests): ``prefect server start`` on
127.0.0.1 in its own process group, waited for by its health check, stopped at the end.

Why not Prefect's embedded ("ephemeral") server: it gives up after
``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS`` (20 s by default), and on a 2-core machine
under load a server with a fresh database takes 20-35 s to answer, so a job failed two times in
three with a traceback. Here the wait is ours: generous (``START_TIMEOUT_S``, or
``EDGEFLEET_PREFECT_START_TIMEOUT``), and a failure is one ``ServiceStartError`` that names the
log and what to do. The server is Prefect's own CLI in a subprocess: this module does not import
prefect.

Stop workers before the server: a worker cut off from its server ignores SIGTERM for about 35 s.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import httpx

from edgefleet.errors import ServiceStartError, ToolMissing

__all__ = ["START_TIMEOUT_S", "LocalPrefectServer", "free_port", "local_prefect_server", "prefect_env",
           "start_timeout", "wait_healthy"]

START_TIMEOUT_S = 180.0  # a fresh database on a loaded 2-core machine: 20-35 s measured, so ample room
STOP_TIMEOUT_S = 30.0
TIMEOUT_ENV = "EDGEFLEET_PREFECT_START_TIMEOUT"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_timeout(environ: Mapping[str, str] = os.environ) -> float:
    """``EDGEFLEET_PREFECT_START_TIMEOUT`` (seconds) or ``START_TIMEOUT_S``."""
    raw = environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return START_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ServiceStartError(f"{TIMEOUT_ENV}={raw!r} is not a positive number of seconds")
    return value


def prefect_env(home: Path, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment of a private Prefect: ``PREFECT_HOME`` under ``home``, no telemetry, no UI,
    no setting inherited from the caller's own Prefect profile or server."""
    env = {k: v for k, v in environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(home), "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_UI_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING",
                # SQLite under load: wait for the write lock (default 10 s) rather than answer 503
                "PREFECT_SERVER_DATABASE_TIMEOUT": "60"})
    return env


def wait_healthy(url: str, *, what: str, timeout_s: float, alive: Callable[[], bool], log: Path | None,
                 hint: str) -> float:
    """Poll ``url`` until it answers 200; the seconds it took. ``ServiceStartError`` naming ``what``,
    its log and ``hint`` when ``alive()`` turns false or ``timeout_s`` passes."""
    t0 = time.monotonic()
    where = f" (log: {log})" if log is not None else ""
    with httpx.Client(trust_env=False, timeout=2.0) as client:
        while True:
            if not alive():
                raise ServiceStartError(f"{what} exited before it answered {url}{where}")
            try:
                if client.get(url).status_code == 200:
                    return time.monotonic() - t0
            except httpx.TransportError:
                pass
            if time.monotonic() - t0 > timeout_s:
                raise ServiceStartError(f"{what} did not answer {url} within {timeout_s:g} s{where}; {hint}")
            time.sleep(0.5)


def stop_process_group(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM the process group of ``proc``, SIGKILL it after ``timeout_s``."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


@dataclass
class LocalPrefectServer:
    """A running ``prefect server start`` on 127.0.0.1."""

    home: Path
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    started_in_s: float = 0.0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a process that talks to this server (a worker, the prefect CLI)."""
        return {**prefect_env(self.home), "PREFECT_API_URL": self.api_url, **extra}

    @classmethod
    def start(cls, home: Path, *, database_url: str | None = None, timeout_s: float | None = None,
              environ: Mapping[str, str] = os.environ) -> Self:
        """Start it (SQLite under ``home``, or ``database_url``) and wait until it is healthy."""
        prefect = Path(sys.executable).parent / "prefect"
        if not prefect.exists():
            raise ToolMissing(f"the prefect command is not installed next to {sys.executable}; run `make setup`")
        timeout = start_timeout(environ) if timeout_s is None else timeout_s
        home.mkdir(parents=True, exist_ok=True)
        port = free_port()
        env = prefect_env(home, environ)
        if database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
        log = home / "server.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                    env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        server = cls(home, port, proc, log)
        try:
            server.started_in_s = wait_healthy(
                f"{server.api_url}/health", what="the Prefect server", timeout_s=timeout,
                alive=lambda: proc.poll() is None, log=log,
                hint=f"the machine may be overloaded: retry, or allow more time with {TIMEOUT_ENV}=SECONDS")
        except BaseException:
            server.stop()
            raise
        return server

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def stop(self) -> None:
        stop_process_group(self.proc, STOP_TIMEOUT_S)


@contextmanager
def local_prefect_server(home: Path, *, database_url: str | None = None,
                         timeout_s: float | None = None) -> Iterator[LocalPrefectServer]:
    """A ``LocalPrefectServer`` for the ``with`` block; ``PREFECT_API_URL`` points at it meanwhile,
    so flows called in this process use it instead of starting an embedded one."""
    server = LocalPrefectServer.start(home, database_url=database_url, timeout_s=timeout_s)
    saved = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_HOME")}
    os.environ.update({"PREFECT_API_URL": server.api_url, "PREFECT_HOME": str(home)})
    try:
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
