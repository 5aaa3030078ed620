"""When a store may be changed: ``windows`` (maintenance windows and freezes, pure: ``now`` is a
parameter), ``groups`` (schedule groups and the freeze decision of a started run, pure) and
``prefect_schedule`` (the Prefect deployments and runs that carry them out)."""

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
