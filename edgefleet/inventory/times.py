"""Time in the fleet model: weekdays, wall-clock times, maintenance windows and change freezes.

Pure, like ``edgefleet.inventory.model`` (which re-exports these names): a window is local wall
time in its store's timezone; a freeze is dates or datetimes, read per store.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator

__all__ = ["FREEZE_YEARS", "HHMM_RE", "Freeze", "MaintenanceWindow", "StrictModel", "Weekday", "parse_wall_time"]


class StrictModel(BaseModel):
    """The fleet model's base: unknown fields are errors, instances are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class _Model(StrictModel):
    """The base of the models below."""


class Weekday(StrEnum):
    mon = "mon"
    tue = "tue"
    wed = "wed"
    thu = "thu"
    fri = "fri"
    sat = "sat"
    sun = "sun"

    @property
    def number(self) -> int:
        """Monday is 0, like ``datetime.weekday()``."""
        return list(Weekday).index(self)


HHMM_RE = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")
FREEZE_YEARS = (1970, 2999)


def parse_wall_time(v: Any, *, end: bool = False) -> time:
    """A time of day as ``"HH:MM"`` local wall time (00:00-23:59; ``"24:00"`` too when ``end``,
    meaning the midnight that ends the day). Anything else raises ``ValueError`` saying why: a
    number (YAML 1.1 reads an unquoted ``25:00`` as 1500 and ``0100`` as 64), a UTC offset or zone,
    seconds, or junk."""
    if isinstance(v, time):
        if v.tzinfo is not None or v.second or v.microsecond:
            raise ValueError(f"{v.isoformat()} must be a plain local HH:MM time (no seconds, no UTC offset)")
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ValueError(f"{v!r} is not a time of day: write it as a quoted \"HH:MM\"")
    if not isinstance(v, str):
        raise ValueError(f"got the number {v!r}, not a time: YAML 1.1 reads an unquoted 25:00 as 1500 (base 60) "
                         "and 0100 as 64 (octal); quote the time as \"HH:MM\"")
    if end and v == "24:00":
        return time(0, 0)
    m = HHMM_RE.match(v)
    if m:
        return time(int(m[1]), int(m[2]))
    head = re.match(r"^(\d{1,2}):(\d{2})(.*)$", v.strip())
    if head and head[3]:
        rest = head[3]
        if re.fullmatch(r":\d{2}(\.\d+)?", rest):
            raise ValueError(f"{v!r} has seconds: window times are HH:MM")
        raise ValueError(f"{v!r} carries a UTC offset or zone ({rest.strip()!r}): window times are local wall time "
                         "in the store's timezone, written HH:MM")
    if head:
        hh, mm = int(head[1]), int(head[2])
        if hh == 24 and mm == 0:
            raise ValueError("'24:00' is allowed only as a window's end (the midnight that ends the day)")
        if hh > 23 or mm > 59:
            raise ValueError(f"{v!r} is not a time of day: hours run 00-23, minutes 00-59")
        raise ValueError(f"{v!r} must have two-digit hours: write {hh:02d}:{mm:02d}")
    raise ValueError(f"{v!r} is not a time of day: write HH:MM, like 22:00")


def _start_time(v: Any) -> time:
    return parse_wall_time(v)


def _end_time(v: Any) -> time:
    return parse_wall_time(v, end=True)


def _freeze_bound(v: Any) -> Any:
    # A number would be read by pydantic as seconds since 1970 (``start: 1500`` is 00:25 on
    # 1 January 1970): refuse it, like a time of day.
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        raise ValueError(f"got the number {v!r}, not a date: write a date like 2026-12-24 or a datetime like "
                         "2026-12-24T18:00:00")
    if isinstance(v, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", v.strip()):
        # "2026-11-23" from JSON or an API is a whole day, as YAML's native date would be; without
        # this, pydantic would read it as a midnight datetime and a one-day freeze would last no time.
        return date.fromisoformat(v.strip())
    return v


class MaintenanceWindow(_Model):
    """A weekly window in the store's local time. ``end <= start`` means it crosses midnight:
    ``{days: [fri], start: "22:00", end: "04:00"}`` runs Friday 22:00 to Saturday 04:00."""

    days: list[Weekday] = Field(min_length=1)
    start: time
    end: time  # "24:00" is allowed here: the midnight that ends the start day

    _norm_start = field_validator("start", mode="before")(_start_time)
    _norm_end = field_validator("end", mode="before")(_end_time)

    @field_serializer("start", "end", when_used="json")
    def _hhmm(self, v: time) -> str:
        # written back as the inventory writes it, so a JSON round trip validates again
        return v.strftime("%H:%M")

    @field_validator("days", mode="before")
    @classmethod
    def _days(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list):
            out: list[Any] = []
            for d in v:
                if isinstance(d, str) and d.lower() in ("daily", "all", "everyday"):
                    out.extend(Weekday)
                elif isinstance(d, str):
                    out.append(d.lower()[:3])
                else:
                    out.append(d)
            return out
        return v

    @model_validator(mode="after")
    def _not_empty(self) -> MaintenanceWindow:
        if self.start == self.end and self.start != time(0, 0):
            raise ValueError("start and end are equal: a window must have a length (use 00:00-00:00 for all day)")
        return self

    @property
    def duration(self) -> timedelta:
        s = self.start.hour * 60 + self.start.minute
        e = self.end.hour * 60 + self.end.minute
        minutes = (e - s) % (24 * 60) or 24 * 60
        return timedelta(minutes=minutes)

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start


class Freeze(_Model):
    """A fleet change freeze. Dates (or naive datetimes) are read in each store's local time; an
    aware datetime is an absolute instant. ``end`` as a date is inclusive (the whole day)."""

    name: str
    start: datetime | date
    end: datetime | date
    reason: str = ""
    countries: list[str] = Field(default_factory=list)  # empty: the whole fleet
    groups: list[str] = Field(default_factory=list)

    _norm = field_validator("start", "end", mode="before")(_freeze_bound)

    @model_validator(mode="after")
    def _order(self) -> Freeze:
        s, e = self.start, self.end
        if type(s) is not type(e):
            raise ValueError("start and end must both be dates or both be datetimes")
        if isinstance(s, datetime) and isinstance(e, datetime) and (s.tzinfo is None) != (e.tzinfo is None):
            raise ValueError("start and end must both carry a UTC offset or both be local")
        if e < s:
            raise ValueError(f"end {e} is before start {s}")
        lo, hi = FREEZE_YEARS
        if not (lo <= s.year and e.year <= hi):
            raise ValueError(f"freeze years must lie in {lo}-{hi} (got {s.year}-{e.year})")
        return self


