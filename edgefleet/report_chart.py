"""The report's chart (``edgefleet.report``), pure: stores per release over time as step lines,
and below them one lane per release train with each stage's run and soak as bars on the same time
axis. ``draw_chart`` computes every coordinate; ``templates/chart.svg.j2`` only prints them.

The drawing is 960 user units wide and scales with the page; on a narrow screen the stylesheet
enlarges its text and lines (``report.css``), which the margins here leave room for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgefleet.trains.timeline import TrainSummary

__all__ = ["draw_chart", "when_text"]


def when_text(dt: datetime) -> str:
    """An instant as the report prints it: UTC, to the second, with a Z."""
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") + "Z"


# Okabe-Ito: distinguishable with common colour blindness; dashes tell series apart on grey paper.
_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
_DASHES = ("", "6 3", "2 3", "8 3 2 3")
_W, _H = 960, 360
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 20, 20, 70  # room for the labels a narrow screen enlarges


def _time_ticks(t0: datetime, t1: datetime, n: int = 6) -> list[datetime]:
    span = (t1 - t0).total_seconds()
    steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
             172800, 604800]
    step = next((s for s in steps if span / s <= n), steps[-1])
    first = math.ceil(t0.timestamp() / step) * step
    out = []
    t = first
    while t <= t1.timestamp() + 1e-6:
        out.append(datetime.fromtimestamp(t, UTC))
        t += step
    return out


_LANE = 48  # height of one train's lane below the chart
_STAGE_FILLS = {"passed": "#009E73", "failed": "#D55E00"}  # Okabe-Ito, as the series; other stages blue


def _lanes(trains: Sequence[TrainSummary], x: Any, y0: float, now: datetime) -> list[dict[str, Any]]:
    """One lane per train: each stage's run (first store started to last store finished, or now)
    and its soak (to ``soak_until``) as bars on the chart's time axis."""
    lanes = []
    for k, t in enumerate(trains):
        y = y0 + _LANE * k
        bars = []
        for st in t.stages:
            if st.started_at is None:
                continue
            end = st.finished_at or now
            bars.append({"kind": "run", "name": st.name, "status": st.status, "x": f"{x(st.started_at):.1f}",
                         "w": f"{max(2.0, x(end) - x(st.started_at)):.1f}", "wide": x(end) - x(st.started_at) > 48,
                         "tx": f"{x(st.started_at) + 3:.1f}", "fill": _STAGE_FILLS.get(st.status, "#0072B2"),
                         "title": f"{st.name}: {st.status}, {when_text(st.started_at)} to "
                                  f"{when_text(st.finished_at) if st.finished_at else 'now'}"})
            if st.finished_at is not None and st.soak_until is not None:
                bars.append({"kind": "soak", "name": st.name, "status": st.status, "x": f"{x(st.finished_at):.1f}",
                             "w": f"{max(2.0, x(st.soak_until) - x(st.finished_at)):.1f}", "wide": False,
                             "tx": "", "fill": "#dcecf8",
                             "title": f"{st.name}: soak until {when_text(st.soak_until)}"})
        lanes.append({"label": f"train {t.id}: {t.release}, {t.status}", "label_y": f"{y + 18:.1f}",
                      "bar_y": f"{y + 26:.1f}", "text_y": f"{y + 37:.1f}", "bars": bars})
    return lanes


def draw_chart(releases: Sequence[str], points: Sequence[tuple[datetime, dict[str, int]]], *, start: datetime,
           end: datetime, trains: Sequence[TrainSummary] = (), now: datetime | None = None) -> dict[str, Any]:
    """Coordinates of the chart from ``start`` to ``end``: one step line per release through
    ``points`` (``edgefleet.report.release_timeline``), then a lane per train (a stage still
    running is drawn up to ``now``)."""
    t0, t1 = start, end
    if t1 - t0 < timedelta(seconds=60):  # a single instant still needs a width to draw on
        t0, t1 = t0 - timedelta(seconds=30), t1 + timedelta(seconds=30)
    top = max(1, max((max(c.values(), default=0) for _t, c in points), default=0))
    ystep = max(1, math.ceil(top / 8))
    ymax = math.ceil(top / ystep) * ystep
    pw, ph = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    span = (t1 - t0).total_seconds()

    def x(t: datetime) -> float:
        return _LEFT + pw * (t - t0).total_seconds() / span

    def y(v: int) -> float:
        return _TOP + ph * (1 - v / ymax)

    multi_day = t0.date() != t1.date()
    ticks = _time_ticks(t0, t1)
    whole_days = len(ticks) > 1 and all(t.hour == t.minute == t.second == 0 for t in ticks)
    fmt = "%m-%d" if whole_days else "%m-%d %H:%M" if multi_day else "%H:%M:%S" if span < 600 else "%H:%M"
    series = []
    for i, rel in enumerate(releases if points else ()):
        (ts0, c0), rest = points[0], points[1:]
        d = [f"M{x(ts0):.1f},{y(c0[rel]):.1f}"] + [f"H{x(t):.1f}V{y(c[rel]):.1f}" for t, c in rest]
        d.append(f"H{x(t1):.1f}")
        series.append({"release": rel, "final": points[-1][1][rel], "d": "".join(d),
                       "colour": _COLOURS[i % len(_COLOURS)],
                       "dash": _DASHES[(i // len(_COLOURS) + i) % len(_DASHES)],
                       # offset overlapping lines by a pixel per series so equal counts stay visible
                       "shift": f"{(i - (len(releases) - 1) / 2) * 1.5:.1f}"})
    below = _H  # the legend is HTML below the drawing: it wraps on a narrow screen
    lanes = _lanes(trains, x, below + 8, now or t1)
    return {"width": _W, "height": below + (_LANE * len(lanes) + 16 if lanes else 0), "left": _LEFT,
            "right": _W - _RIGHT, "top": _TOP, "bottom": _TOP + ph, "x_label_x": f"{_LEFT + pw / 2:.1f}",
            "y_label_y": f"{_TOP + ph / 2:.1f}",
            "dates": t0.strftime("%Y-%m-%d") + (" to " + t1.strftime("%Y-%m-%d") if multi_day else ""),
            "gridlines": [{"y": f"{y(v):.1f}", "label_y": f"{y(v) + 4:.1f}", "value": v}
                          for v in range(0, ymax + 1, ystep)],
            # a label near the right end ends at its tick: centred, it would run off the drawing
            "ticks": [{"x": f"{x(t):.1f}", "label": t.strftime(fmt), "anchor": "end" if x(t) > _W - 80 else "middle"}
                      for t in ticks],
            "series": series, "lanes": lanes, "lanes_top": below, "lanes_bottom": below + _LANE * len(lanes) + 8}


