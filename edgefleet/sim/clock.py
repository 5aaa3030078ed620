"""The simulator's clock: simulated time runs ``scale`` times faster than real time from a start."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from edgefleet.errors import InputError

__all__ = ["SimClock"]


class SimClock:
    """Simulated time: ``start`` plus real elapsed time multiplied by ``scale``."""

    def __init__(self, start: datetime, scale: float, monotonic: Callable[[], float] = time.monotonic):
        if start.tzinfo is None:
            raise InputError(f"--clock {start.isoformat()} has no UTC offset; write e.g. 2026-11-02T23:30:00Z")
        if scale <= 0:
            raise InputError(f"--time-scale must be positive, got {scale}")
        self.scale = scale
        self._mono = monotonic
        self._t0 = monotonic()
        self._start = start.astimezone(UTC)

    def now(self) -> datetime:
        return self._start + timedelta(seconds=(self._mono() - self._t0) * self.scale)

    def set(self, when: datetime) -> None:
        if when.tzinfo is None:
            raise InputError(f"clock value {when.isoformat()} has no UTC offset")
        self._start, self._t0 = when.astimezone(UTC), self._mono()

    def real_seconds(self, sim_seconds: float) -> float:
        return sim_seconds / self.scale

