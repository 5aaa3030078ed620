"""Scheduling rules that decide when a store may be changed: maintenance windows and freezes.

Pure (no clock, no I/O); see ``edgefleet.schedule.windows``.
"""

from edgefleet.schedule.windows import (
    MAX_SPAN,
    applicable_freezes,
    freeze_applies,
    freeze_at,
    freeze_interval,
    in_window,
    iter_windows,
    next_allowed_start,
    next_window,
    resolve_local,
    window_at,
)

__all__ = [
    "MAX_SPAN",
    "applicable_freezes",
    "freeze_applies",
    "freeze_at",
    "freeze_interval",
    "in_window",
    "iter_windows",
    "next_allowed_start",
    "next_window",
    "resolve_local",
    "window_at",
]
