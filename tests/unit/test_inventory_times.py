"""Times of day and freezes in the inventory: YAML 1.1 traps refused at validation, and nothing that
validated can make the planner raise.

The property test writes real inventory files (fleet.yml, group_vars, stores) with window times, time
zones and freezes drawn from valid and hostile values, loads them with the real loader and plans a
rollout of every inventory that validated."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import available_timezones

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.errors import InventoryError
from edgefleet.inventory.load import load_fleet
from edgefleet.inventory.model import MaintenanceWindow, parse_wall_time
from edgefleet.rollout.plan import RolloutPolicy, plan_rollout
from edgefleet.schedule.groups import FreezeVerdict, freeze_decision, plan_schedule, upcoming_starts
from edgefleet.schedule.windows import in_window, next_window

ZONES = sorted(available_timezones())
# Zones with odd offsets, half-hour DST, DST at midnight, or a skipped day.
ODD_ZONES = ["Australia/Lord_Howe", "Pacific/Kiritimati", "Pacific/Apia", "America/St_Johns", "Asia/Kathmandu",
             "America/Santiago", "Asia/Beirut", "Africa/Casablanca", "Europe/Copenhagen", "America/New_York", "UTC"]

hhmm = st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.integers(0, 59))
# Raw YAML text for a time value: quoted valid ones mostly, and every trap we know of.
quoted = hhmm.map(lambda t: f"'{t}'") | st.sampled_from(["'00:00'", "'23:59'", "'24:00'", "'02:30'", "'03:00'"])
time_text = st.one_of(
    quoted, quoted, quoted, quoted,  # most draws validate, so the planner sees many windows
    hhmm,  # unquoted: a base-60 integer in YAML 1.1
    st.sampled_from(["'24:00'", "25:00", "0100", "'22:00Z'", "'22:00+01:00'", "'22:00:30'", "'7:00'", "'24:01'",
                     "late", "null", "true", "1.5", "'  22:00'", "''", "[22, 0]", "{h: 22}", "'22:00 '", "-1",
                     "'23:59'", "'00:00'", "2026-11-23"]),
)
day_text = st.one_of(
    st.lists(st.sampled_from(["mon", "tue", "wed", "thu", "fri", "sat", "sun", "daily", "Friday"]), min_size=1,
             max_size=3),
    st.lists(st.sampled_from(["mon", "xyz", "7"]), max_size=2),
).map(lambda ds: "[" + ", ".join(ds) + "]")
freeze_bound = st.one_of(
    st.dates(date(1960, 1, 1), date(3100, 12, 31)).map(str),
    st.datetimes(datetime(1960, 1, 1), datetime(3100, 1, 1)).map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S")),
    st.datetimes(datetime(1960, 1, 1), datetime(3100, 1, 1)).map(lambda d: d.strftime("'%Y-%m-%dT%H:%M:%S+05:45'")),
    st.sampled_from(["1500", "0", "22:00", "'2026-11-24 18:00'", "9999-12-31", "0001-01-01", "'now'", "null"]),
)


@st.composite
def inventory_text(draw: st.DrawFn) -> dict[str, str]:
    windows = draw(st.lists(st.tuples(day_text, time_text, time_text), min_size=1, max_size=3))
    wtext = "".join(f"    - {{days: {d}, start: {s}, end: {e}}}\n" for d, s, e in windows)
    freezes = draw(st.lists(st.tuples(freeze_bound, freeze_bound), max_size=2) | st.just([]))
    ftext = "freezes:\n" + "".join(f"  - {{name: f{i}, start: {s}, end: {e}}}\n" for i, (s, e) in enumerate(freezes))
    zone = draw(st.one_of(st.sampled_from(ODD_ZONES), st.sampled_from(ZONES)))
    fleet = ("fleet: {name: prop}\n"
             "defaults:\n"
             "  network: {dns: [10.0.0.53]}\n"
             "  wipe_method: talos-api\n"
             "  maintenance_windows:\n" + wtext + (ftext if freezes else ""))
    store_windows = draw(st.one_of(st.none(), st.tuples(day_text, time_text, time_text)))
    store = ("stores:\n"
             "  - id: s-1\n    name: S\n    country: DK\n    region: r\n"
             f"    timezone: {zone}\n"
             "    network: {subnet: 10.9.0.0/24, gateway: 10.9.0.1}\n"
             "    cluster: {name: s-1}\n"
             "    nodes: [{name: s-1-n1, role: controlplane, mac: '02:00:00:00:00:01', ip: 10.9.0.11}]\n")
    if store_windows:
        d, s, e = store_windows
        store += f"    maintenance_windows: [{{days: {d}, start: {s}, end: {e}}}]\n"
    return {"fleet.yml": fleet, "stores/s.yml": store}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=inventory_text(),
       now=st.datetimes(datetime(1970, 1, 2), datetime(2998, 12, 1), timezones=st.just(UTC)),
       node_minutes=st.integers(1, 24 * 60), horizon_days=st.integers(1, 400))
def test_any_inventory_that_validates_can_be_planned_and_scheduled(files: dict[str, str], now: datetime,
                                                                   node_minutes: int, horizon_days: int) -> None:
    root = Path(tempfile.mkdtemp())
    try:
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        try:
            fleet = load_fleet(root)
        except InventoryError as e:
            assert all(p.file for p in e.problems), str(e)
            return
        policy = RolloutPolicy(node_duration=timedelta(minutes=node_minutes), horizon=timedelta(days=horizon_days))
        plan = plan_rollout(fleet, "v1", policy, now)  # must not raise
        assert {s.store_id for s in plan.stores()} | {s for s, _ in plan.unschedulable} == {"s-1"}
        store = fleet.stores["s-1"]
        for w in store.maintenance_windows:
            assert w.start.tzinfo is None and w.start.second == 0 and w.end.tzinfo is None
        s, e = next_window(store, now)
        assert s < e and in_window(store, s)
        # The scheduler's side of the same rules (window groups, upcoming starts, the freeze gate).
        (gs,) = plan_schedule(fleet, now, min_duration=policy.node_duration)
        upcoming_starts(fleet, gs.group, now, 3)
        assert freeze_decision(fleet, ["s-1"], now).verdict in set(FreezeVerdict)
    finally:
        shutil.rmtree(root)


@pytest.mark.parametrize(("value", "end", "ok"), [
    ("00:00", False, True), ("23:59", False, True), ("24:00", True, True), ("24:00", False, False),
    (1500, False, False), (64, True, False), (True, False, False), (22.5, False, False), ("22:00Z", False, False),
    ("22:00+01:00", True, False), ("22:00:00", False, False), ("7:00", False, False), ("", False, False),
])
def test_parse_wall_time(value: Any, end: bool, ok: bool) -> None:
    if ok:
        assert parse_wall_time(value, end=end).tzinfo is None
    else:
        with pytest.raises(ValueError):
            parse_wall_time(value, end=end)


def test_aware_or_second_times_from_python_are_refused_too() -> None:
    from datetime import time

    with pytest.raises(ValueError, match="UTC offset"):
        MaintenanceWindow(days=["mon"], start=time(22, 0, tzinfo=UTC), end=time(4, 0))  # type: ignore[list-item]
    with pytest.raises(ValueError, match="no seconds"):
        MaintenanceWindow(days=["mon"], start=time(22, 0, 30), end=time(4, 0))  # type: ignore[list-item]


@pytest.mark.parametrize(("start", "end", "says"), [
    ("1500", "2026-12-01", "got the number 1500, not a date"),
    ("0001-01-01", "2026-12-01", "freeze years must lie in 1970-2999"),
    ("2026-12-01", "9999-12-31", "freeze years must lie in 1970-2999"),
])
def test_freeze_traps_are_refused_with_their_line(sample_copy: Path, start: str, end: str, says: str) -> None:
    f = sample_copy / "fleet.yml"
    text = f.read_text()
    f.write_text(text + f"  - {{name: bad, start: {start}, end: {end}}}\n")
    with pytest.raises(InventoryError) as ei:
        load_fleet(sample_copy)
    (p,) = ei.value.problems
    assert says in p.message and p.line == len(text.splitlines()) + 1 and p.file is not None, p.render()


@pytest.mark.parametrize("command", [["inventory", "validate"], ["rollout", "plan", "--release", "v1", "-i"],
                                     ["seed", "build", "--release", "v1", "--store", "us-001", "--out", "OUT", "-i"]])
def test_commands_refuse_an_unquoted_time_with_file_line_store_field_and_hint(sample_copy: Path,
                                                                             command: list[str]) -> None:
    gv = sample_copy / "group_vars" / "country_us.yml"
    gv.write_text(gv.read_text().replace('start: "01:00"', "start: 0100").replace('end: "05:30"', "end: 25:00"))
    home = sample_copy.parent / "home"
    out = sample_copy.parent / "out"
    args = [str(out) if a == "OUT" else a for a in command]
    r = subprocess.run([sys.executable, "-m", "edgefleet.cli", *args, str(sample_copy)], capture_output=True,
                       text=True, timeout=120, cwd=sample_copy.parent,
                       env={**os.environ, "COLUMNS": "300", "EDGEFLEET_HOME": str(home)})
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert ('group_vars/country_us.yml:5: store us-001 [maintenance_windows.0.start] got the number 64'
            in r.stderr), r.stderr
    assert 'write start: "01:00"' in r.stderr and "country_us.yml:6: store us-001 [maintenance_windows.0.end]" \
        in r.stderr, r.stderr
    assert not out.exists()


def test_sample_inventory_quotes_every_time() -> None:
    from tests.helpers import SAMPLE_INVENTORY

    for f in SAMPLE_INVENTORY.rglob("*.yml"):
        data = yaml.safe_load(f.read_text())
        layers = [data.get("defaults", {})] if f.name == "fleet.yml" else (
            data.get("stores", []) if "stores" in data else [data])
        for layer in layers:
            for w in (layer or {}).get("maintenance_windows", []):
                assert isinstance(w["start"], str) and isinstance(w["end"], str), f


def test_a_store_survives_a_json_round_trip() -> None:
    """Flow parameters and the ledger carry stores as JSON: times come back as they were written."""
    from edgefleet.inventory.load import load_fleet
    from edgefleet.inventory.model import Store
    from tests.helpers import SAMPLE_INVENTORY

    for store in load_fleet(SAMPLE_INVENTORY).stores.values():
        raw = store.model_dump(mode="json")
        assert all(len(w["start"]) == 5 and len(w["end"]) == 5 for w in raw["maintenance_windows"])
        assert Store.model_validate(raw) == store
