"""Timing helpers and result files shared by the benchmarks."""

from __future__ import annotations

import json
import platform
import resource
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

RESULTS = Path(__file__).resolve().parent / "results"
T = TypeVar("T")


def timed(fn: Callable[[], T], repeat: int = 3) -> tuple[float, T]:
    """Median wall seconds over ``repeat`` runs, and the last result."""
    times: list[float] = []
    result: Any = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_result(name: str, rows: list[dict[str, Any]], notes: str = "") -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    doc = {"benchmark": name, "when": datetime.now(UTC).isoformat(timespec="seconds"),
           "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
           "rows": rows, "notes": notes}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def render_table() -> str:
    """One markdown table of every result file: what, edgefleet, baseline, ratio, goal, met."""
    lines = ["| benchmark | measure | edgefleet | baseline | ratio | goal | met |", "|---|---|---|---|---|---|---|"]
    for f in sorted(RESULTS.glob("*.json")):
        doc = json.loads(f.read_text())
        for r in doc["rows"]:
            met = ("yes" if r["met"] else "no") if "met" in r else "-"
            lines.append(
                f"| {doc['benchmark']} | {r['measure']} | {r['edgefleet']} | {r.get('baseline', '-')} | "
                f"{r.get('ratio', '-')} | {r.get('goal', '-')} | {met} |"
            )
    table = "\n".join(lines) + "\n"
    (RESULTS / "table.md").write_text(table)
    return table
