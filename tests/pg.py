"""A private PostgreSQL 15 (Debian's binaries) on 127.0.0.1 for tests: initdb, pg_ctl start/stop,
createdb. Import as ``tests.pg``; ``start_postgres`` is a context manager so a module- or
session-scoped fixture can own one server.

initdb refuses to run as root; when the tests run as root, the cluster belongs to the Debian
package's ``postgres`` user and commands run through ``su postgres``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgefleet.prefect_server import free_port
from tests.helpers import require_tool

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _as_postgres(cmd: str, timeout: float = 120) -> None:
    argv = ["su", "postgres", "-c", cmd] if os.geteuid() == 0 else ["sh", "-c", cmd]
    subprocess.run(argv, check=True, capture_output=True, timeout=timeout)


@dataclass(frozen=True)
class Postgres:
    """A running server: ``port`` on 127.0.0.1, user ``postgres`` with trust authentication."""

    port: int
    base: Path

    def createdb(self, name: str) -> None:
        _as_postgres(f"{PG_BIN}/createdb -h 127.0.0.1 -p {self.port} -U postgres {name}")

    def url(self, database: str, driver: str = "pg8000") -> str:
        """A SQLAlchemy URL, e.g. ``postgresql+pg8000://...`` (edgefleet) or ``postgresql+asyncpg://...``
        (Prefect's server)."""
        return f"postgresql+{driver}://postgres@127.0.0.1:{self.port}/{database}"


def require_postgres(driver_module: str = "pg8000") -> None:
    """Skip (fail under CI=true) when PostgreSQL 15 or the Python driver is missing."""
    require_tool(PG_BIN / "initdb", "PostgreSQL 15 (Debian package postgresql)")
    if importlib.util.find_spec(driver_module) is None:
        require_tool(None, f"the {driver_module} driver (pip install {driver_module})")


@contextmanager
def start_postgres() -> Iterator[Postgres]:
    """initdb a fresh cluster in a temporary directory, start it on a free 127.0.0.1 port, and stop
    and delete it on exit."""
    require_postgres()
    base = Path(tempfile.mkdtemp(prefix="edgefleet-pg-"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
    port = free_port()
    data = base / "data"
    _as_postgres(f"{PG_BIN}/initdb -D {data} --auth=trust -U postgres")
    _as_postgres(f"{PG_BIN}/pg_ctl -D {data} -l {base}/log -w "
                 f"-o '-c listen_addresses=127.0.0.1 -p {port} -k {base} -c max_connections=200' start")
    try:
        yield Postgres(port, base)
    finally:
        _as_postgres(f"{PG_BIN}/pg_ctl -D {data} -m immediate -w stop")
        shutil.rmtree(base, ignore_errors=True)
