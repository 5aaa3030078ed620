"""A real Prefect server and process workers for integration tests, started and stopped by the test.

``PrefectServer.start`` is ``edgefleet.prefect_server.LocalPrefectServer.start``: ``prefect server
start`` on 127.0.0.1 (SQLite under its home, or any database URL such as
``postgresql+asyncpg://...``), waited for on ``/api/health`` with a named, generous timeout.
Workers run ``prefect worker start`` in their own process group. Stop workers before the server:
a worker cut off from its server ignores SIGTERM for about 35 s.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.prefect_server import LocalPrefectServer, stop_process_group
from tests.helpers import REPO

PREFECT = Path(sys.executable).parent / "prefect"


@dataclass
class PrefectServer(LocalPrefectServer):
    """edgefleet's own local server (what ``make demo`` runs), plus the prefect CLI and workers."""

    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

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
            stop_process_group(w, 20)
        self.workers.clear()
        super().stop()
