"""``edgefleet train`` and its alias ``schedule rollout`` on a temp home with the sample inventory:
the dry-run stage plan (the canary ring alone in stage 0, on an earlier night than everyone else),
start, list, status (stages, stores, next windows in local time, what the train waits for), pause,
resume, approve, abort (refused off a terminal without --yes), and bad input refused by option."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner

from edgefleet.cli import app
from edgefleet.errors import EdgefleetError
from edgefleet.releases.catalog import ReleaseCatalog
from edgefleet.state.db import open_state
from tests.helpers import SAMPLE_INVENTORY, record_release

CANARIES = ["de-003", "dk-002", "us-002"]
MONDAY = "2026-12-07T00:00:00Z"
INV = ["-i", str(SAMPLE_INVENTORY)]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "home"
    monkeypatch.setenv("EDGEFLEET_HOME", str(home))
    monkeypatch.delenv("EDGEFLEET_STATE_URL", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    record_release(home, "r1", stable=False)  # a train takes a release that was only built
    yield home


def _run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, list(args))
    if isinstance(r.exception, EdgefleetError):
        return r.exception.exit_code, str(r.exception)
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.output


def _json(*args: str) -> Any:
    r = CliRunner().invoke(app, [*args, "--json"])
    assert r.exit_code == 0 and r.exception is None, (r.output, r.exception)
    return json.loads(r.stdout)


def _local_date(when: str) -> str:
    return datetime.fromisoformat(when).date().isoformat()


def test_dry_run_puts_the_canary_ring_alone_in_stage_0_on_an_earlier_night(home: Path) -> None:
    plan = _json("train", "start", "--release", "r1", "--dry-run", "--from", MONDAY, *INV)
    assert plan["dry_run"] is True and plan["train"] is None
    stages = plan["stages"]
    assert [s["name"] for s in stages] == ["canary", "ring1", "ring2"]
    assert sorted(p["store"] for p in stages[0]["stores"]) == CANARIES
    canary_nights = {(p["timezone"], _local_date(p["start_local"])) for p in stages[0]["stores"]}
    assert all(night[1] == "2026-12-07" or night == ("America/New_York", "2026-12-06") for night in canary_nights)
    canary_end = datetime.fromisoformat(stages[0]["end"])
    for later in stages[1:]:
        assert datetime.fromisoformat(later["unlocks"]) >= canary_end + timedelta(hours=24)
        for p in later["stores"]:
            start = datetime.fromisoformat(p["start"])
            assert start >= canary_end + timedelta(hours=24), p
            # not the same local night as the canaries in its zone
            zone = ZoneInfo(p["timezone"])
            assert start.astimezone(zone).date() > canary_end.astimezone(zone).date(), p
    assert _json("train", "list") == []  # a dry run records nothing


def test_dry_run_table_and_the_schedule_rollout_alias(home: Path) -> None:
    code, out = _run("train", "start", "--release", "r1", "--dry-run", "--from", MONDAY, *INV)
    assert code == 0 and "dry run: nothing recorded" in out and "0 canary" in out and "dk-002" in out, out
    assert "Europe/Copenhagen" not in out and "CET" in out  # local times, with the zone's abbreviation
    r = CliRunner().invoke(app, ["schedule", "rollout", "--release", "r1", "--dry-run", "--from", MONDAY, *INV,
                                 "--json"])
    assert r.exit_code == 0, r.output
    assert "now starts a release train" in r.stderr
    alias = json.loads(r.stdout)
    direct = _json("train", "start", "--release", "r1", "--dry-run", "--from", MONDAY, *INV)
    assert alias == direct


def test_schedule_rollout_takes_the_stage_options(home: Path) -> None:
    r = CliRunner().invoke(app, ["schedule", "rollout", "--release", "r1", "--dry-run", "--from", MONDAY, *INV,
                                 "--stage", "canary", "--stage", "half=50%", "--stage", "100%", "--soak", "12h",
                                 "--approve-stages", "half", "--json"])
    assert r.exit_code == 0, r.output
    stages = json.loads(r.stdout)["stages"]
    assert [s["name"] for s in stages] == ["canary", "half", "100%"]
    assert [s["policy"]["approve"] for s in stages] == [False, True, False]
    assert {s["policy"]["soak_s"] for s in stages} == {12 * 3600}
    assert len(stages[1]["stores"]) == 11 and len(stages[2]["stores"]) == 11  # 50% of the 22 non-canaries


def test_the_cli_dry_run_does_not_import_prefect(home: Path) -> None:
    code = ("import json, sys\nfrom typer.testing import CliRunner\nfrom edgefleet.cli import app\n"
            "r = CliRunner().invoke(app, sys.argv[1:])\n"
            "print(json.dumps({'code': r.exit_code, 'prefect': any(m == 'prefect' or m.startswith('prefect.') "
            "for m in sys.modules)}))\n")
    proc = subprocess.run([sys.executable, "-c", code, "schedule", "rollout", "--release", "r1", "--dry-run",
                           "--from", MONDAY, *INV, "--json"], capture_output=True, text=True, timeout=120,
                          env={**os.environ}, check=True)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"code": 0, "prefect": False}


def test_start_list_status_pause_resume_approve_abort(home: Path) -> None:
    started = _json("train", "start", "--release", "r1", "--soak", "24h", *INV)
    train = started["train"]
    tid = train["id"]
    assert tid.startswith("tr") and train["status"] == "running" and train["release"] == "r1"
    assert [t["id"] for t in _json("train", "list")] == [tid]

    st = _json("train", "status", tid, *INV)
    assert [(s["name"], s["status"]) for s in st["stages"]] == [("canary", "running"), ("ring1", "locked"),
                                                                ("ring2", "locked")]
    assert len(st["stores"]) == 25 and st["counts"] == {"pending": 25}
    dk = next(s for s in st["stores"] if s["store"] == "dk-002")
    assert dk["stage_name"] == "canary" and dk["state"] == "pending"
    window = dk["next_window"]
    assert window["timezone"] == "Europe/Copenhagen"
    assert datetime.fromisoformat(window["local"]) == datetime.fromisoformat(window["utc"])
    assert datetime.fromisoformat(window["local"]).utcoffset() in (timedelta(hours=1), timedelta(hours=2))
    assert st["waiting"], st  # the controller's own words: what the train waits for
    code, out = _run("train", "status", tid, *INV)
    assert code == 0 and "canary" in out and "dk-002" in out and "Europe/Copenhagen" in out, out

    code, out = _run("train", "approve", tid)
    assert code == 1 and "no stage awaiting approval" in out, out
    code, out = _run("train", "approve", tid, "--stage", "rign1")
    assert code == 2 and "did you mean ring1" in out, out

    assert _json("train", "pause", tid)["pause_requested"] is True
    assert _json("train", "resume", tid)["pause_requested"] is False
    code, out = _run("train", "resume", tid)
    assert code == 1 and "not paused" in out, out

    code, out = _run("train", "abort", tid, "--rollback")  # CliRunner's stdin is not a terminal
    assert code == 2 and "add --yes" in out, out
    aborted = _json("train", "abort", tid, "--rollback", "--yes")
    assert aborted["abort_requested"] is True and aborted["rollback_requested"] is True


def test_a_second_train_over_the_same_stores_is_refused_naming_the_holder(home: Path) -> None:
    tid = _json("train", "start", "--release", "r1", *INV)["train"]["id"]
    record_release(home, "r2", stable=False)
    code, out = _run("train", "start", "--release", "r2", "--stages", "ring1", *INV)
    assert code == 1 and f"belongs to train {tid}" in out and "train abort" in out, out
    code, out = _run("train", "start", "--release", "r2", "--stages", "ring1", "--dry-run", *INV)
    assert code == 1 and f"belongs to train {tid}" in out, out  # the plan says so too


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--release", "nope"], 2, "unknown release 'nope'"),
    (["--release", "r1", "--stages", "canary,rign1"], 2, "--stages 'rign1': no ring, group or store"),
    (["--release", "r1", "--soak", "1 day"], 2, "--soak '1 day' is not a duration"),
    (["--release", "r1", "--stage-budget", "ring9=1"], 2, "--stage-budget 'ring9=1': no stage named 'ring9'"),
    (["--release", "r1", "--from", MONDAY], 2, "--from plans as of another instant"),
    (["--release", "r1", "--max-per-region", "0"], 2, "--max-per-region"),
])
def test_bad_input_is_refused_naming_the_option(home: Path, args: list[str], code: int, message: str) -> None:
    got, out = _run("train", "start", *args, *INV)
    assert got == code and message in out, out
    assert _json("train", "list") == []


def test_a_revoked_release_is_refused(home: Path) -> None:
    ReleaseCatalog(open_state(f"sqlite:///{home / 'edgefleet.db'}")).revoke("r1", now=datetime.now(UTC),
                                                                            reason="bad kernel")
    code, out = _run("train", "start", "--release", "r1", "--dry-run", *INV)
    assert code == 2 and "release r1 is revoked (bad kernel)" in out, out


def test_an_unknown_train_is_bad_input(home: Path) -> None:
    for args in (["status", "tr-nope", *INV], ["pause", "tr-nope"], ["abort", "tr-nope", "--yes"]):
        code, out = _run("train", *args)
        assert code == 2 and "tr-nope" in out, (args, out)
