"""Services that a job starts itself (the demo's Prefect server) fail in one line that names the
component, its log and what to do, and leave no process behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.errors import ServiceStartError
from edgefleet.prefect_server import LocalPrefectServer, start_timeout
from tests.helpers import REPO


def _processes_with(env_entry: str) -> list[int]:
    """Pids of live processes whose environment holds ``env_entry`` (e.g. ``PREFECT_HOME=...``)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if env_entry.encode() in (d / "environ").read_bytes().split(b"\0"):
                    found.append(int(d.name))
            except OSError:
                continue
    return found


def test_a_server_that_does_not_answer_in_time_is_named_and_stopped(tmp_path: Path) -> None:
    with pytest.raises(ServiceStartError) as ei:
        LocalPrefectServer.start(tmp_path / "prefect", timeout_s=0.5)
    msg = str(ei.value)
    assert "the Prefect server did not answer http://127.0.0.1:" in msg and "within 0.5 s" in msg
    assert "EDGEFLEET_PREFECT_START_TIMEOUT" in msg and str(tmp_path / "prefect" / "server.log") in msg
    assert (tmp_path / "prefect" / "server.log").exists()
    assert _processes_with(f"PREFECT_HOME={tmp_path / 'prefect'}") == [], "the server must be stopped"


def test_the_start_timeout_is_a_named_setting() -> None:
    assert start_timeout({}) >= 120
    assert start_timeout({"EDGEFLEET_PREFECT_START_TIMEOUT": "300"}) == 300
    with pytest.raises(ServiceStartError, match="EDGEFLEET_PREFECT_START_TIMEOUT='soon'"):
        start_timeout({"EDGEFLEET_PREFECT_START_TIMEOUT": "soon"})


def test_the_demo_says_in_one_line_when_prefect_does_not_come_up(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "EDGEFLEET_"))}
    env["EDGEFLEET_PREFECT_START_TIMEOUT"] = "0.5"
    p = subprocess.run([sys.executable, "-m", "edgefleet.demo"], cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)},
                       capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 1, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0].startswith("demo failed: the Prefect server did not answer") and \
        "EDGEFLEET_PREFECT_START_TIMEOUT" in lines[0]
    assert "start a local Prefect server" in p.stdout
