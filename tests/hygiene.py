"""Secret hygiene scans shared by the tests: which secrets a run used, and where they must never
appear (logs, artifacts, results, reports, the ledger, captured output).

``run_secrets(home, passwords)`` collects every secret of an edgefleet home in the forms it could
leak in: each store's cluster secrets (``<home>/secrets/*.yaml``: CA and service-account keys as
the base64 of PEM that configs carry, the PEM body lines, tokens), the seed server's HMAC key (hex
and base64), and the BMC passwords given. ``find_secrets(texts, secrets)`` reports every hit, plus
anything shaped like a private key block or a seed URL token (those leak whatever their value).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Engine, inspect, text

__all__ = ["Secret", "dump_state", "find_secrets", "run_secrets"]

# Leaves of a secrets bundle that are not secret: certificates and the cluster's id.
_PUBLIC_LEAVES = frozenset({"crt", "id"})
_MIN_LEN = 12  # shorter values would match by chance
_PATTERNS = {
    "a private key block": re.compile(r"PRIVATE KEY-----"),
    "a seed URL token": re.compile(r"/[A-Za-z0-9_-]{1,400}\.[0-9]{1,12}\.[A-Za-z0-9_-]{43}/"),
}


@dataclass(frozen=True)
class Secret:
    """One secret value, in one form, and where it comes from (``label``, safe to print)."""

    label: str
    value: str


def _pem_forms(label: str, b64_pem: str) -> list[Secret]:
    out = [Secret(label, b64_pem), Secret(f"{label} (middle of its base64)", b64_pem[len(b64_pem) // 3:][:48])]
    try:
        pem = base64.b64decode(b64_pem, validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return out
    body = [ln for ln in pem.splitlines() if ln and not ln.startswith("-----")]
    out += [Secret(f"{label} (PEM line {i + 1})", ln) for i, ln in enumerate(body) if len(ln) >= _MIN_LEN]
    return out


def _leaves(data: Any, path: str = "") -> Iterable[tuple[str, str]]:
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _leaves(v, f"{path}.{k}" if path else str(k))
    elif isinstance(data, str):
        yield path, data


def run_secrets(home: Path, passwords: Iterable[str] = ()) -> list[Secret]:
    """Every secret of ``home`` and the given BMC passwords, in the forms worth searching for."""
    out = [Secret("a BMC password", p) for p in passwords]
    for f in sorted((home / "secrets").glob("*.yaml")):
        data = yaml.safe_load(f.read_text())
        for path, value in _leaves(data):
            if path.rsplit(".", 1)[-1] in _PUBLIC_LEAVES or len(value) < _MIN_LEN:
                continue
            label = f"{f.name}: {path}"
            out += _pem_forms(label, value) if path.endswith(".key") else [Secret(label, value)]
    key = home / "seed-server.key"
    if key.exists():
        raw = key.read_bytes()
        out += [Secret("the seed server key (hex)", raw.hex()),
                Secret("the seed server key (base64)", base64.b64encode(raw).decode().rstrip("=")),
                Secret("the seed server key (url-safe base64)", base64.urlsafe_b64encode(raw).decode().rstrip("="))]
    return out


def find_secrets(texts: Mapping[str, str | bytes], secrets: Iterable[Secret]) -> list[str]:
    """``"<where>: <what>"`` for every secret (or private-key / token shape) found in ``texts``."""
    wanted = list(secrets)
    hits = []
    for where, content in texts.items():
        body = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
        hits += [f"{where}: {s.label}" for s in wanted if s.value in body]
        hits += [f"{where}: {what}" for what, rx in _PATTERNS.items() if rx.search(body)]
    return hits


def dump_state(engine: Engine) -> dict[str, str]:
    """Every row of every table of the state store, as text per table."""
    out = {}
    with engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            rows = conn.execute(text(f'SELECT * FROM "{table}"')).all()
            out[f"table {table}"] = json.dumps([list(r) for r in rows], default=str)
    return out
