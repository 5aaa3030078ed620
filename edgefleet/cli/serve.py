"""``edgefleet serve``: the rollout report live (``/``, reloading itself as the ledger changes),
Prometheus metrics (``/metrics``) and a health check (``/healthz``) over HTTP (``edgefleet.live``).

Exit codes: 0 stopped (Ctrl-C), 1 the server could not start (the port is taken), 2 bad input (no
state store where one was expected).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from edgefleet.cli._common import default_state_url, edgefleet_home
from edgefleet.errors import InputError, ServiceStartError

HostOpt = Annotated[str, typer.Option("--host", help="Address to listen on (any but 127.0.0.1 shows the fleet's "
                                                     "state to that network)")]
PortOpt = Annotated[int, typer.Option("--port", "-p", min=1, max=65535, help="Port to listen on")]
TitleOpt = Annotated[str, typer.Option("--title", help="The page title")]
MaxEventsOpt = Annotated[int | None, typer.Option("--max-events", min=0, show_default=False,
                                                  help="Show only the newest N events (default: all, in pages)")]
RefreshOpt = Annotated[float, typer.Option("--refresh", min=1.0, help="Seconds between checks of the ledger for "
                                                                      "changes (the page reloads on one)")]

DEFAULT_PORT = 9477
SHUTDOWN_GRACE_S = 5


def _require_state(url: str) -> None:
    """A SQLite state store must exist: serving an empty one made on the spot would show nothing."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return  # open_state names a bad URL with the fix
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        db = Path(str(parsed.database))
        if not db.is_file():
            raise InputError(f"no state store at {db} (EDGEFLEET_HOME={edgefleet_home()}): point EDGEFLEET_HOME or "
                             "EDGEFLEET_STATE_URL at the state store your rollouts write")


def serve_cmd(host: HostOpt = "127.0.0.1", port: PortOpt = DEFAULT_PORT, title: TitleOpt = "edgefleet rollout report",
              max_events: MaxEventsOpt = None, refresh: RefreshOpt = 2.0) -> None:
    """Serve the rollout report live, /metrics for Prometheus and /healthz, until Ctrl-C.

    Example: edgefleet serve --port 9477, then open http://127.0.0.1:9477/ and add
    127.0.0.1:9477 to a Prometheus scrape config (docs/grafana-edgefleet.json is a dashboard)."""
    import uvicorn

    from edgefleet.live import LiveOptions, build_live_app
    from edgefleet.logs import LogFormat, configure_logging
    from edgefleet.state.db import open_state

    url = default_state_url()
    _require_state(url)
    engine = open_state(url)
    if not logging.getLogger().handlers:  # no --log-format given: plain lines, requests included
        configure_logging(LogFormat.text)
    # A live page keeps its event stream open: the streams end when the server is told to stop,
    # else Ctrl-C would wait for every browser tab to close (and the grace bounds the rest).
    app = build_live_app(engine, LiveOptions(title=title, max_events=max_events, poll_s=refresh,
                                             refresh_s=max(30.0, refresh)), stopping=lambda: server.should_exit,
                         warm=True)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_config=None, lifespan="off",
                                           access_log=True, timeout_graceful_shutdown=SHUTDOWN_GRACE_S))
    # a log record, not console text: with --log-format json every line on stderr is JSON
    logging.getLogger("edgefleet.serve").info("serving http://%s:%s/ (the report), /metrics, /healthz; Ctrl-C stops",
                                              host, port, extra={"host": host, "port": port})
    server.run()
    if not server.started:
        raise ServiceStartError(f"edgefleet serve could not listen on {host}:{port} (see the log above: the port "
                                "may be taken); choose another with --port")
