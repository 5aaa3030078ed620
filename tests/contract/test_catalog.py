"""The release catalog on a real SQLite file and a real PostgreSQL server (started privately on
127.0.0.1): lifecycle, uniqueness, revocation, racing writers, artifact checks."""

from __future__ import annotations

import importlib.util
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from edgefleet.errors import ArtifactError, ReleaseInputError, StateError
from edgefleet.releases.catalog import Release, ReleaseCatalog, ReleaseState, verify_artifact
from edgefleet.releases.upstream import sha256_file
from edgefleet.state.db import close_all, create_state_engine, open_state
from tests.helpers import require_tool

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def _release(tmp: Path, name: str, created: datetime = T0) -> Release:
    art = tmp / "releases" / name / f"{name}.iso"
    art.parent.mkdir(parents=True, exist_ok=True)
    art.write_bytes(f"image of {name}".encode() * 100)
    return Release(name=name, artifact_path=art, sha256=sha256_file(art), size=art.stat().st_size,
                   talos_version="v1.12.6", kubernetes_version="1.35.0",
                   installer_image="ghcr.io/siderolabs/installer:v1.12.6", extensions=("siderolabs/iscsi-tools",),
                   kernel_args=("talos.platform=nocloud",), upstream_sha256="a" * 64, template_hash="b" * 64,
                   build_seconds=1.5, state=ReleaseState.built, created_at=created, state_changed_at=created)


PG_BIN = Path("/usr/lib/postgresql/15/bin")
_db_names = itertools.count()


def _as_postgres(cmd: str) -> None:
    # initdb refuses to run as root; the Debian package's `postgres` user owns the cluster then.
    argv = ["su", "postgres", "-c", cmd] if os.geteuid() == 0 else ["sh", "-c", cmd]
    subprocess.run(argv, check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A private PostgreSQL 15 on 127.0.0.1:<free port>; yields a URL prefix without database name."""
    require_tool(PG_BIN / "initdb", "PostgreSQL 15 (Debian package postgresql)")
    if importlib.util.find_spec("pg8000") is None:
        require_tool(None, "the pg8000 driver (pip install pg8000)")
    base = Path(tempfile.mkdtemp(prefix="edgefleet-pg-"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = base / "data"
    _as_postgres(f"{PG_BIN}/initdb -D {data} --auth=trust -U postgres")
    _as_postgres(f"{PG_BIN}/pg_ctl -D {data} -l {base}/log -w "
                 f"-o '-c listen_addresses=127.0.0.1 -p {port} -k {base}' start")
    try:
        yield f"postgresql+pg8000://postgres@127.0.0.1:{port}"
    finally:
        _as_postgres(f"{PG_BIN}/pg_ctl -D {data} -m immediate -w stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty state store of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'edgefleet.db'}"
    prefix: str = request.getfixturevalue("postgres")
    name = f"t{os.getpid()}_{next(_db_names)}"
    port = prefix.rsplit(":", 1)[1]
    _as_postgres(f"{PG_BIN}/createdb -h 127.0.0.1 -p {port} -U postgres {name}")
    return f"{prefix}/{name}"


@pytest.fixture
def catalog(state_url: str) -> Iterator[ReleaseCatalog]:
    engine = create_state_engine(state_url)
    yield ReleaseCatalog(engine)
    engine.dispose()


def test_sqlite_file_uses_wal_and_a_busy_timeout(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'x.db'}"
    engine = open_state(url)
    try:
        assert open_state(url) is engine
        with engine.connect() as c:
            assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert c.execute(text("PRAGMA busy_timeout")).scalar() == 10_000
            tables = {r[0] for r in c.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))}
        assert "releases" in tables
    finally:
        close_all()


def test_bad_state_url_is_a_clear_error() -> None:
    with pytest.raises(StateError, match=r"EDGEFLEET_STATE_URL"):
        open_state("not a url")


def test_add_get_list_and_round_trip(catalog: ReleaseCatalog, tmp_path: Path) -> None:
    r1 = catalog.add(_release(tmp_path, "r1"))
    catalog.add(_release(tmp_path, "r2", T0 + timedelta(hours=1)))
    assert catalog.get("r1") == r1
    assert [r.name for r in catalog.list()] == ["r1", "r2"]
    assert catalog.get("r1").created_at == T0
    with pytest.raises(ReleaseInputError, match=r"already exists"):
        catalog.add(_release(tmp_path, "r1"))
    with pytest.raises(ReleaseInputError, match=r"unknown release 'nope'.*r1, r2"):
        catalog.get("nope")


def test_lifecycle_and_revocation(catalog: ReleaseCatalog, tmp_path: Path) -> None:
    catalog.add(_release(tmp_path, "r1"))
    with pytest.raises(ReleaseInputError, match=r"cannot become stable"):
        catalog.promote("r1", ReleaseState.stable, now=T0)
    assert catalog.promote("r1", ReleaseState.canary, now=T0).state is ReleaseState.canary
    r = catalog.promote("r1", ReleaseState.stable, now=T0 + timedelta(days=1), note="canaries green")
    assert (r.state, r.state_changed_at, r.note) == (ReleaseState.stable, T0 + timedelta(days=1), "canaries green")
    assert catalog.require_rollable("r1").name == "r1"
    with pytest.raises(ReleaseInputError, match=r"needs a reason"):
        catalog.revoke("r1", now=T0, reason=" ")
    catalog.revoke("r1", now=T0 + timedelta(days=2), reason="CVE-2026-0001 in the kernel")
    assert [r.name for r in catalog.list(ReleaseState.revoked)] == ["r1"]
    with pytest.raises(ReleaseInputError, match=r"revoked \(CVE-2026-0001.*can never be rolled out"):
        catalog.require_rollable("r1")
    for target in (ReleaseState.canary, ReleaseState.stable):
        with pytest.raises(ReleaseInputError, match=r"revoked is final"):
            catalog.promote("r1", target, now=T0)
    with pytest.raises(ReleaseInputError, match=r"use revoke"):
        catalog.promote("r1", ReleaseState.revoked, now=T0)


def test_concurrent_promotions_have_one_winner(tmp_path: Path, state_url: str) -> None:
    url = state_url
    catalogs = [ReleaseCatalog(create_state_engine(url)) for _ in range(8)]
    catalogs[0].add(_release(tmp_path, "r1"))
    barrier = threading.Barrier(len(catalogs))
    outcomes: list[str] = []

    def promote(c: ReleaseCatalog) -> None:
        barrier.wait()
        try:
            c.promote("r1", ReleaseState.canary, now=T0)
            outcomes.append("ok")
        except (StateError, ReleaseInputError) as e:
            outcomes.append(type(e).__name__)

    threads = [threading.Thread(target=promote, args=(c,)) for c in catalogs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert outcomes.count("ok") == 1, outcomes
    assert len(outcomes) == len(catalogs)
    for c in catalogs:
        c.engine.dispose()


def test_verify_artifact_rehashes(catalog: ReleaseCatalog, tmp_path: Path) -> None:
    r = catalog.add(_release(tmp_path, "r1"))
    assert verify_artifact(r) == r.artifact_path
    data = bytearray(r.artifact_path.read_bytes())
    data[10] ^= 0xFF  # same size, one flipped byte
    r.artifact_path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"was altered"):
        verify_artifact(catalog.get("r1"))
    r.artifact_path.unlink()
    with pytest.raises(ArtifactError, match=r"missing"):
        verify_artifact(catalog.get("r1"))
