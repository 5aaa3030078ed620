"""The train benchmark's window-bound lower bound: each store at its first window with room for
its nodes after its stage unlocks, taking nodes x boot; the next stage unlocks after the last store
plus the soak."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bench.bench_train import window_lower_bound
from edgefleet.inventory.generate import plan_synthetic_fleet, write_inventory
from edgefleet.inventory.load import load_fleet
from edgefleet.inventory.model import Fleet

MONDAY_NOON = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


def _fleet(tmp_path: Path, window: dict[str, object]) -> Fleet:
    fleet, gv, by_country = plan_synthetic_fleet(4, 1, freezes=False)
    fleet["defaults"]["maintenance_windows"] = [window]
    gv.pop("ring_canary", None)
    for sts in by_country.values():
        for st in sts:
            st.pop("maintenance_windows", None)
    return load_fleet(write_inventory(tmp_path / "inv", fleet, gv, by_country))


def _local(day: datetime, zone: str, hour: int) -> datetime:
    d = day.astimezone(ZoneInfo(zone)).date()
    return datetime(d.year, d.month, d.day, hour, tzinfo=ZoneInfo(zone)).astimezone(UTC)


def test_stages_chain_through_windows_and_soaks(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path, {"days": ["daily"], "start": "22:00", "end": "05:00"})
    a, b = sorted(fleet.stores)[:2]
    boot, soak = timedelta(seconds=120), timedelta(hours=24)
    bound = window_lower_bound(fleet, [("first", [a], soak), ("second", [b], soak)], MONDAY_NOON,
                               node_duration=timedelta(minutes=20), boot=boot)
    sa, sb = fleet.stores[a], fleet.stores[b]
    first_begin = _local(MONDAY_NOON, sa.timezone, 22)
    assert bound[0].unlocks == MONDAY_NOON
    assert bound[0].end == first_begin + boot * len(sa.nodes)
    assert bound[0].soak_until == bound[0].end + soak
    assert bound[1].unlocks == bound[0].soak_until
    # Unlocked a day after 22:00 local: inside that night's window, so it starts at once.
    assert bound[1].end == bound[1].unlocks + boot * len(sb.nodes)
    assert bound[1].soak_until == bound[1].end + soak


def test_a_window_too_short_for_the_store_is_refused(tmp_path: Path) -> None:
    # A 30-minute window has no room for a store of 2 or more nodes at 20 minutes each.
    fleet = _fleet(tmp_path, {"days": ["daily"], "start": "22:00", "end": "22:30"})
    big = next(s for s in sorted(fleet.stores) if len(fleet.stores[s].nodes) >= 2)
    with pytest.raises(ValueError, match=big):
        window_lower_bound(fleet, [("only", [big], timedelta(0))], MONDAY_NOON,
                           node_duration=timedelta(minutes=20), boot=timedelta(seconds=120))
