"""``edgefleet serve``: the rollout report live, and the fleet's Prometheus metrics, over HTTP
(Starlette on uvicorn).

Routes::

    GET /          the report (``edgefleet.report``: the very page ``edgefleet report`` writes), with
                   a few lines of script that reload it when the ledger changes; without script it
                   refreshes itself every ``refresh_s`` seconds (a ``<noscript>`` meta refresh)
    GET /events    server-sent events: ``event: ledger`` with the ledger's version on connect and
                   whenever it changes (checked every ``poll_s`` seconds), a comment line as keep-alive
    GET /metrics   Prometheus exposition (``edgefleet.metrics.collector.LedgerCollector``)
    GET /healthz   200 ``{"status": "ok"}`` when the ledger can be read, 503 naming the error otherwise

The ledger's version is what changes whenever anything the report shows does: the newest event id
and the latest change of an operation, a train or a release. The page is rendered again only when
it changed (rendering reads the whole ledger, as the report command does).
"""

from __future__ import annotations

import asyncio
import html
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from edgefleet.errors import EdgefleetError
from edgefleet.metrics.collector import LedgerCollector
from edgefleet.releases.catalog import ReleaseRow
from edgefleet.rollout.ledger import EventRow, RolloutRow
from edgefleet.state.db import session_scope
from edgefleet.trains.store import TrainRow

__all__ = ["LiveOptions", "build_live_app", "ledger_version", "live_page"]

log = logging.getLogger("edgefleet.serve")


@dataclass(frozen=True)
class LiveOptions:
    title: str = "edgefleet rollout report"
    max_events: int | None = None
    """The newest events the log shows (None: every one, in pages, as ``edgefleet report``)."""
    refresh_s: float = 30.0
    """The page's own refresh when script is off."""
    poll_s: float = 2.0
    """How often ``/events`` looks at the ledger."""
    keepalive_s: float = 15.0


def ledger_version(engine: Engine) -> str:
    """A string that changes whenever the report would (see the module docstring)."""
    with session_scope(engine) as s:
        parts = [s.scalar(q) for q in (select(func.max(EventRow.id)), select(func.max(RolloutRow.updated_at)),
                                       select(func.max(TrainRow.updated_at)),
                                       select(func.max(ReleaseRow.state_changed_at)),
                                       select(func.count()).select_from(ReleaseRow))]
    return "|".join("-" if p is None else str(p) for p in parts)


_SCRIPT = """<script>
(function () {
  var shown = document.querySelector('meta[name="edgefleet-ledger-version"]').content;
  var key = "edgefleet-live-scroll";
  var y = sessionStorage.getItem(key);
  if (y !== null) { sessionStorage.removeItem(key); window.scrollTo(0, +y); }
  var source = new EventSource("events");
  source.addEventListener("ledger", function (e) {
    if (e.data !== shown) { sessionStorage.setItem(key, String(window.scrollY)); source.close(); location.reload(); }
  });
})();
</script>
"""


def live_page(report_html: str, version: str, refresh_s: float) -> str:
    """The report page with what makes it live: its ledger version, the reload script, and a
    meta refresh for a browser without script."""
    head = (f'<meta name="edgefleet-ledger-version" content="{html.escape(version, quote=True)}">\n'
            f'<noscript><meta http-equiv="refresh" content="{max(1, round(refresh_s))}"></noscript>\n')
    page = report_html.replace("</head>", head + "</head>", 1) if "</head>" in report_html else head + report_html
    return page.replace("</body>", _SCRIPT + "</body>", 1) if "</body>" in page else page + _SCRIPT


class _Pages:
    """The rendered page, kept until the ledger's version changes."""

    def __init__(self, engine: Engine, opts: LiveOptions):
        self.engine = engine
        self.opts = opts
        self._lock = threading.Lock()
        self._cached: tuple[str, str] | None = None

    def page(self) -> str:
        from edgefleet.report import collect_report, render_report

        with self._lock:
            version = ledger_version(self.engine)
            if self._cached is None or self._cached[0] != version:
                now = datetime.now(UTC)
                data = collect_report(self.engine, now=now, title=self.opts.title, max_events=self.opts.max_events,
                                      wall=now)
                self._cached = (version, live_page(render_report(data, max_events=self.opts.max_events), version,
                                                   self.opts.refresh_s))
            return self._cached[1]


def build_live_app(engine: Engine, opts: LiveOptions | None = None,
                   stopping: Callable[[], bool] = lambda: False, warm: bool = False) -> Starlette:
    """The ASGI app of ``edgefleet serve`` for the state store behind ``engine``; ``stopping``
    says when the server shuts down (the event streams then end, so open pages do not hold the
    shutdown up); ``warm``: read the ledger's events for the metrics now, in a thread, so that
    Prometheus's first scrape does not wait for it."""
    opts = opts or LiveOptions()
    registry = CollectorRegistry(auto_describe=False)
    collector = LedgerCollector(engine)
    registry.register(collector)
    if warm:  # the first scrape folds the whole event log (about 2 s per 60,000 events): do it now
        threading.Thread(target=lambda: list(collector.collect()), name="metrics-warm-up", daemon=True).start()
    pages = _Pages(engine, opts)

    async def index(request: Request) -> Response:
        del request
        try:
            return HTMLResponse(await run_in_threadpool(pages.page), headers={"Cache-Control": "no-store"})
        except (SQLAlchemyError, EdgefleetError) as e:
            log.warning("the report could not be read from the ledger: %s", e)
            return HTMLResponse(f"<!doctype html><title>{html.escape(opts.title)}</title><p>The ledger could not be "
                                f"read: {html.escape(str(e))}</p>", status_code=503)

    async def metrics(request: Request) -> Response:
        del request
        body = await run_in_threadpool(generate_latest, registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        del request
        try:
            await run_in_threadpool(ledger_version, engine)
        except (SQLAlchemyError, EdgefleetError) as e:
            return JSONResponse({"status": "error", "error": str(e)}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            sent: str | None = None
            quiet = 0.0
            while not stopping() and not await request.is_disconnected():
                version: str | None = sent  # the ledger unread: nothing new to say
                try:
                    version = await run_in_threadpool(ledger_version, engine)
                except (SQLAlchemyError, EdgefleetError) as e:
                    log.warning("the ledger could not be read: %s", e)
                if version is not None and version != sent:
                    sent, quiet = version, 0.0
                    yield f"event: ledger\ndata: {version}\n\n"
                elif quiet >= opts.keepalive_s:
                    quiet = 0.0
                    yield ": keep-alive\n\n"
                waited = 0.0
                while waited < opts.poll_s and not stopping():
                    await asyncio.sleep(min(0.25, opts.poll_s - waited))
                    waited += 0.25
                quiet += waited

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    return Starlette(routes=[Route("/", index), Route("/events", events), Route("/metrics", metrics),
                             Route("/healthz", healthz)])
