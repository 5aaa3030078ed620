"""The one redactor: what must never reach a log, the ledger, an error message or a report.

* ``redact_tokens(text)``: every seed-server URL token (``/<node b64>.<expiry>.<mac b64>/``, which
  grants a node's seed and with it the cluster secrets in its user-data) becomes ``/<token>/``. The
  engine applies it to every reason and detail it records; the seed code to every URL it shows.
* ``redact(text)``: that, plus PEM blocks, URL query strings and ``token=...``-like pairs (names
  containing token, password, passwd, secret or api key). For text a person reads that may quote
  anything: the HTML report, messages from outside systems.

Pure: no I/O. The replacements say what was removed, so a reader knows something was there.
"""

from __future__ import annotations

import re

__all__ = ["SEED_TOKEN", "redact", "redact_tokens"]

SEED_TOKEN = re.compile(r"/[A-Za-z0-9_-]{1,400}\.[0-9]{1,12}\.[A-Za-z0-9_-]{43}/")
"""A seed-server token as a URL path segment (``edgefleet.seeds.server`` mints them)."""

_URL_QUERY = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#\"'<>]+)\?[^\s#\"'<>]*")
_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?(?:-----END [A-Z0-9 ]+-----|$)", re.DOTALL)
_SECRET_PAIR = re.compile(r"(?i)\b([\w-]*(?:token|password|passwd|secret|api[_-]?key)[\w-]*)\s*([=:])\s*[^\s,;&]+")


def redact_tokens(text: str) -> str:
    """``text`` with every seed-server URL token replaced by ``<token>``."""
    return SEED_TOKEN.sub("/<token>/", text)


def redact(text: str) -> str:
    """``text`` without PEM blocks, seed-server tokens, URL query strings or ``token=...``-like pairs."""
    text = _PEM.sub("[PEM block removed]", text)
    text = _URL_QUERY.sub(r"\1?[query removed]", text)  # before the tokens: "<token>" ends a URL match
    text = redact_tokens(text)
    return _SECRET_PAIR.sub("[secret removed]", text)
