"""A real Prefect server and process workers for integration tests, started and stopped by the test.

``PrefectServer.start`` runs ``prefect server start`` on 127.0.0.1 (SQLite under its home, or any
database URL such as ``postgresql+asyncpg://...``) and waits for ``/api/health`` with a bounded
wait. Workers run ``prefect worker start`` in their own process group. Stop workers before the
server: a worker cut off from its server ignores SIGTERM for about 35 s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.helpers import REPO
from tests.pg import free_port

PREFECT = Path(sys.executable).parent / "prefect"


def base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(home), "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_UI_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"})
    return env


def _stop(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


@dataclass
class PrefectServer:
    home: Path
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def env(self, **extra: str) -> dict[str, str]:
        return {**base_env(self.home), "PREFECT_API_URL": self.api_url, **extra}

    @classmethod
    def start(cls, home: Path, *, database_url: str | None = None, timeout: float = 120) -> PrefectServer:
        home.mkdir(parents=True, exist_ok=True)
        port = free_port()
        env = base_env(home)
        if database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
        log = home / "server.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                    env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        server = cls(home, port, proc, log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {proc.returncode}:\n{server.tail()}")
            try:
                if httpx.get(f"{server.api_url}/health", timeout=2).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        server.stop()
        raise RuntimeError(f"prefect server not healthy within {timeout} s:\n{server.tail()}")

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def prefect(self, *args: str, timeout: float = 180, **extra_env: str) -> subprocess.CompletedProcess[str]:
        """Run the prefect CLI against this server from the repository root; fail with its output."""
        proc = subprocess.run([str(PREFECT), *args], cwd=REPO, env=self.env(**extra_env), capture_output=True,
                              text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise AssertionError(f"prefect {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
                                 f"{proc.stderr[-3000:]}")
        return proc

    def start_worker(self, pool: str, **extra_env: str) -> subprocess.Popen[bytes]:
        """A process worker on ``pool``, started outside the checkout: flow code is found through
        the deployments' pull steps (``EDGEFLEET_REPO`` for flows/prefect.yaml), as on another machine."""
        log = self.home / f"worker-{pool}-{len(self.workers)}.log"
        # Poll every second (default 10 s) so a run scheduled a few seconds ahead starts promptly.
        env = self.env(PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="2", **extra_env)
        with log.open("wb") as out:
            proc = subprocess.Popen([str(PREFECT), "worker", "start", "--pool", pool, "--type", "process",
                                     "--limit", "8"], cwd=self.home, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.workers.append(proc)
        return proc

    def worker_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.home.glob("worker-*.log")))

    def stop(self) -> None:
        for w in self.workers:
            _stop(w, timeout=20)
        self.workers.clear()
        _stop(self.proc, timeout=30)
