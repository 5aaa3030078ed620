"""Log output for the command line: plain text, or structured (one JSON object per line) for log
shippers (``edgefleet --log-format json ...``, or ``EDGEFLEET_LOG_FORMAT=json``).

A JSON line carries ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``message`` (the formatted
message, redacted by ``edgefleet.redact``), the exception's text as ``exc`` when there is one, and
every ``extra={...}`` field the call passed that is not one of the record's own attributes.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from edgefleet.redact import redact

__all__ = ["JsonLogFormatter", "LogFormat", "configure_logging"]

_RECORD_FIELDS = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message", "asctime", "taskName"}


class LogFormat(StrEnum):
    text = "text"
    json = "json"


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(), "logger": record.name, "message": redact(record.getMessage())}
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                out[key] = value
        return json.dumps(out, default=str, ensure_ascii=False)


_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_CHATTY = ("alembic",)  # at INFO it narrates every schema check; its warnings still come through


def configure_logging(fmt: LogFormat, level: int = logging.INFO, stream: Any = None) -> logging.Handler:
    """Send log records of ``level`` and above to ``stream`` (stderr) in ``fmt``: the root logger's
    handlers are replaced by this one, so uvicorn's and the libraries' records come out alike."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLogFormatter() if fmt is LogFormat.json else logging.Formatter(_TEXT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    return handler
