"""The window guard leaves room for how long steps take on the rollout's clock: on a simulator
running 3,600x on a loaded machine, a step sent 0.2 s after its check lands 12 simulated minutes
later, past a 5-minute margin."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edgefleet.inventory.load import load_fleet
from edgefleet.rollout.reimage.base import WindowClosed, WindowGuard
from edgefleet.rollout.settings import EngineSettings

INVENTORY = Path(__file__).resolve().parents[2] / "inventory"
# us-001 (America/New_York): Monday to Thursday 01:00-05:30; 05:20 on Wednesday 2026-11-04 is 10:20 UTC.
TEN_MINUTES_LEFT = datetime(2026, 11, 4, 10, 20, tzinfo=UTC)


def _ctx(now: datetime, scale: float, uncertainty: timedelta = timedelta(0), **settings: Any) -> Any:
    fleet = load_fleet(INVENTORY)
    return SimpleNamespace(fleet=fleet, settings=EngineSettings(**settings), now=lambda: now, step_latency_s=0.0,
                           sleep=asyncio.sleep,
                           endpoints=SimpleNamespace(time_scale=scale, clock_uncertainty=uncertainty,
                                                     real_seconds=lambda s: s / scale))


def _guard(ctx: Any) -> WindowGuard:
    return WindowGuard(ctx, ctx.fleet.stores["us-001"])


def test_ten_minutes_left_is_room_for_a_quick_step() -> None:
    _guard(_ctx(TEN_MINUTES_LEFT, 3600.0)).check()


def test_slow_steps_at_3600x_need_more_room_than_the_margin() -> None:
    ctx = _ctx(TEN_MINUTES_LEFT, 3600.0)
    guard = _guard(ctx)
    guard.start_sequence()
    guard.note_step()
    time.sleep(0.2)  # the previous step took 0.2 s to be sent and answered: 12 simulated minutes
    guard.note_step()
    assert guard.margin() >= timedelta(minutes=24)
    with pytest.raises(WindowClosed):
        guard.check()
    # Another store's guard in the same run knows it too (its first step has nothing to time).
    with pytest.raises(WindowClosed):
        _guard(ctx).check()


def test_at_the_wall_clock_the_margin_is_the_setting() -> None:
    ctx = _ctx(TEN_MINUTES_LEFT, 1.0)
    guard = _guard(ctx)
    guard.start_sequence()
    guard.note_step()
    time.sleep(0.2)
    guard.note_step()
    assert guard.margin() == EngineSettings().step_margin
    guard.check()


def test_the_clock_uncertainty_is_added() -> None:
    ctx = _ctx(TEN_MINUTES_LEFT, 3600.0, uncertainty=timedelta(minutes=6))
    assert _guard(ctx).margin() == EngineSettings().step_margin + timedelta(minutes=6)
    with pytest.raises(WindowClosed):
        _guard(ctx).check()


def test_after_a_refused_step_the_next_window_occurrence_is_awaited() -> None:
    """40 minutes left: room for a 20-minute node (wait_open says open) but not for the hour the
    check asks when steps take half a second at 3,600x. After the refusal the guard waits for the
    end of this occurrence (05:30 New York time), not just for a stretch of 20 minutes (that would
    start, eject and start again until the window shut)."""
    clock = [TEN_MINUTES_LEFT - timedelta(minutes=30)]
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)
        clock[0] += timedelta(seconds=s * 3600.0)

    ctx = _ctx(clock[0], 3600.0)
    ctx.now, ctx.sleep = (lambda: clock[0]), sleep
    ctx.step_latency_s = 0.5
    guard = _guard(ctx)
    assert guard.margin() == timedelta(hours=1)
    assert asyncio.run(guard.wait_open(EngineSettings().node_duration))  # 20 minutes fit
    with pytest.raises(WindowClosed):
        guard.check()
    assert asyncio.run(guard.wait_next_window(EngineSettings().node_duration))
    # us-001's next window: Thursday 01:00 New York time (06:00 UTC), after this one ended at 10:30 UTC
    assert clock[0] >= datetime(2026, 11, 5, 6, 0, tzinfo=UTC), clock[0]
    assert slept[0] == pytest.approx(40 * 60 / 3600.0 + 0.01)
