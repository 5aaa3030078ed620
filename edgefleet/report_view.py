"""What the report's template prints (``edgefleet.report``), pure: ReportData in, plain rows out.

* the headline: stores per release now, the active release trains (each with its current stage),
  how many stores need attention (split, last run failed, locked by a dead operation);
* the stores needing attention, each with the command a person runs next;
* the operations (clean one-store provisionings in a row folded into one row) and the trains,
  each linked to its newest event;
* the event log, newest first, in pages of ``EVENTS_PER_PAGE``; each event linked to its
  operation's row.

Anchors are ``op-ID`` (an operation's or a train's row), ``ev-ID`` (its newest event) and
``events-pN`` (page N of the log); an id that is not a plain token becomes a hash (``anchor``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from edgefleet.report_chart import when_text

if TYPE_CHECKING:
    from edgefleet.report_data import DeadLock, OperationSummary, ReportData, StoreOutcome
    from edgefleet.trains.timeline import TrainSummary

__all__ = ["EVENTS_PER_PAGE", "FOLD_PROVISIONS_AT", "anchor", "page_context"]

EVENTS_PER_PAGE = 100
"""Rows of one page of the event log."""

FOLD_PROVISIONS_AT = 3
"""This many or more clean one-store provisionings in a row show as one row of the table."""

_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,100}")


def anchor(prefix: str, ident: str) -> str:
    """An HTML id for ``ident`` (an operation or train id) under ``prefix``: the id itself when it
    is a plain token, else a hash of it (ids in the ledger are tokens; this keeps any other safe)."""
    if _TOKEN.fullmatch(ident):
        return f"{prefix}-{ident}"
    return f"{prefix}-h{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def page_context(data: ReportData, *, max_events: int | None, page_size: int) -> dict[str, Any]:
    """Every variable of ``report.html.j2`` but the chart."""
    events = list(reversed(data.events))  # newest first
    if max_events is not None:
        events = events[:max(0, max_events)]
    newest: dict[str, int] = {}  # operation or train id -> index of its newest event shown
    for i, ev in enumerate(events):
        if ev.rollout is not None:
            newest.setdefault(ev.rollout, i)
    targets = {op.id: anchor("op", op.id) for op in data.operations} | {t.id: anchor("op", t.id) for t in data.trains}
    links = {rid: "#" + anchor("ev", rid) for rid in newest}
    split = _split_rows(data)
    kinds = {op.id: op.kind for op in data.operations}
    failed = [_failed_row(f, kinds.get(f.rollout, "rollout"), targets) for f in data.failed]
    locked = [_locked_row(d, targets) for d in data.dead_locks]
    return {
        "title": data.title, "generated": when_text(data.generated_at), "operations_count": len(data.operations),
        "events_total": data.events_total,
        "headline": _headline(data, len(split), len(failed), len(locked), targets),
        "split": split, "failed": failed, "locked": locked,
        "operations": [_operation_row(item, links) for item in _fold_provisions(data.operations)],
        "fleet_now": _fleet_now(data), "trains": [_train_row(t, links) for t in data.trains],
        "problems": [p for op in data.operations for p in op.problems], "op_anchor": lambda rid: anchor("op", rid),
        "log": _event_log(data, events, newest, targets, page_size)}


def _fleet_now(data: ReportData) -> list[tuple[str, int]]:
    now: dict[str, int] = {}
    for rel in data.current.values():
        now[rel or "(none)"] = now.get(rel or "(none)", 0) + 1
    return sorted(now.items())


def _headline(data: ReportData, split: int, failed: int, locked: int, targets: dict[str, str]) -> dict[str, Any]:
    from edgefleet.trains.model import ACTIVE

    trains = []
    for t in data.trains:
        if t.status not in {s.value for s in ACTIVE}:
            continue
        stage = next((st for st in t.stages if st.status != "passed"), None)
        trains.append({"id": t.id, "release": t.release, "status": t.status, "href": "#" + targets[t.id],
                       "stage": f"{stage.name}: {stage.status}" if stage is not None else "every stage passed"})
    return {"fleet": _fleet_now(data), "stores": len(data.current), "trains": trains, "split": split,
            "failed": failed, "locked": locked, "attention": split + failed + locked}


def _split_rows(data: ReportData) -> list[dict[str, str]]:
    """Stores left split across releases: shown at the top, with the command that continues the repair."""
    from edgefleet.rollout.ledger import repair_command
    from edgefleet.rollout.states import RunState

    return [{"store": p.store, "rollout": p.rollout, "reason": p.reason, "command": repair_command(p.rollout),
             "href": "#" + anchor("op", p.rollout)}
            for op in data.operations for p in op.problems if p.status == RunState.split_.value]


def _failed_row(f: StoreOutcome, kind: str, targets: dict[str, str]) -> dict[str, Any]:
    """A store whose latest run failed, and the command that tries it again (once the reason is fixed)."""
    command = {"provision": f"edgefleet provision -r {f.to_release} {f.store}",
               "rollback": f"edgefleet rollback -r {f.from_release or f.to_release} --limit {f.store}"}.get(
                   kind, f"edgefleet rollout start -r {f.to_release} --limit {f.store}")
    return {"store": f.store, "rollout": f.rollout, "href": "#" + targets[f.rollout] if f.rollout in targets else "",
            "to": f.to_release, "reason": f.reason, "command": command}


def _locked_row(d: DeadLock, targets: dict[str, str]) -> dict[str, Any]:
    if d.holder_status == "unknown":
        why = "the operation is not in the ledger"
    elif d.holder_status == "running":
        beat = when_text(d.heartbeat_at) if d.heartbeat_at else "never"
        why = f"running, but its executor stopped (last heartbeat {beat})"
    else:
        why = f"the operation is {d.holder_status}"
    return {"store": d.store, "holder": d.holder, "href": "#" + targets[d.holder] if d.holder in targets else "",
            "since": when_text(d.since) if d.since else "-", "why": why,
            "command": f"edgefleet rollout resume {d.holder}", "alternative": f"edgefleet rollout abort {d.holder}"}


def _train_row(t: TrainSummary, links: dict[str, str]) -> dict[str, Any]:
    def when(dt: datetime | None) -> str:
        return when_text(dt) if dt is not None else "-"

    return {"id": t.id, "anchor": anchor("op", t.id), "events": links.get(t.id, ""), "release": t.release,
            "status": t.status, "reason": t.reason, "created": when_text(t.created_at),
            "problem": t.status in ("halted", "aborted", "rolling_back"),
            "stages": [{"index": st.index, "name": st.name, "status": st.status, "stores": st.stores,
                        "counts": sorted(st.counts.items()), "started": when(st.started_at),
                        "finished": when(st.finished_at), "soak_until": when(st.soak_until), "reason": st.reason}
                       for st in t.stages]}


def _operation_row(item: OperationSummary | list[OperationSummary], links: dict[str, str]) -> dict[str, Any]:
    if isinstance(item, list):
        return {"folded": True, "ids": [{"id": o.id, "anchor": anchor("op", o.id), "events": links.get(o.id, "")}
                                        for o in item],
                "release": item[0].release, "stores": sum(sum(o.counts.values()) for o in item),
                "first": when_text(min(o.created_at for o in item)),
                "last": when_text(max(o.created_at for o in item))}
    return {"folded": False, "op": item, "anchor": anchor("op", item.id), "events": links.get(item.id, ""),
            "counts": sorted(item.counts.items()), "created": when_text(item.created_at),
            "problem": bool(item.problems) or item.status in ("failed", "halted", "aborted")}


def _clean_provision(op: OperationSummary) -> bool:
    return op.kind == "provision" and op.status == "succeeded" and not op.problems


def _fold_provisions(ops: Sequence[OperationSummary]) -> list[OperationSummary | list[OperationSummary]]:
    """Runs of ``FOLD_PROVISIONS_AT`` or more consecutive succeeded provisionings of one release
    become one list each (a fleet's first day would otherwise push the rollouts off the page);
    anything failed or with a problem keeps its own row."""
    out: list[OperationSummary | list[OperationSummary]] = []
    run: list[OperationSummary] = []

    def flush() -> None:
        if len(run) >= FOLD_PROVISIONS_AT:
            out.append(list(run))
        else:
            out.extend(run)
        run.clear()

    for op in ops:
        if _clean_provision(op) and (not run or run[0].release == op.release):
            run.append(op)
            continue
        flush()
        if _clean_provision(op):
            run.append(op)
        else:
            out.append(op)
    flush()
    return out


def _event_log(data: ReportData, events: Sequence[Any], newest: dict[str, int], targets: dict[str, str],
               page_size: int) -> dict[str, Any]:
    """The log's pages, newest first: each page's rows, its place and its neighbours' anchors."""
    size = max(1, page_size)
    first_of = {i: rid for rid, i in newest.items()}
    rows = [{"when": when_text(ev.ts), "rollout": ev.rollout, "store": ev.store, "node": ev.node, "kind": ev.kind,
             "reason": ev.reason, "id": anchor("ev", first_of[i]) if i in first_of else "",
             "href": "#" + targets[ev.rollout] if ev.rollout in targets else ""}
            for i, ev in enumerate(events)]
    count = (len(rows) + size - 1) // size
    pages = []
    for n in range(count):
        chunk = rows[n * size:(n + 1) * size]
        pages.append({"id": f"events-p{n + 1}", "number": n + 1, "rows": chunk, "from": n * size + 1,
                      "to": n * size + len(chunk), "span": f"{chunk[-1]['when']} to {chunk[0]['when']}",
                      "newer": f"events-p{n}" if n > 0 else "", "older": f"events-p{n + 2}" if n + 1 < count else ""})
    return {"pages": pages, "shown": len(rows), "total": data.events_total,
            "older": max(0, data.events_total - len(rows))}
