"""One redactor (``edgefleet.redact``): what it removes, and that the report, the engine and the
seed code all use it rather than patterns of their own."""

from __future__ import annotations

import re
from pathlib import Path

from edgefleet.redact import SEED_TOKEN, redact, redact_tokens
from edgefleet.seeds.server import mint_token

ROOT = Path(__file__).resolve().parents[2]
TOKEN = mint_token(b"k" * 32, "releases/v1/talos.iso", "dk-0001-n1", 1_790_000_000)


def test_every_seed_token_is_removed_not_only_the_first() -> None:
    text = f"fetch http://a:1/{TOKEN}/releases/v1/talos.iso then http://b:2/{TOKEN}/nocloud/s/n/meta-data"
    assert redact_tokens(text) == "fetch http://a:1/<token>/releases/v1/talos.iso then http://b:2/<token>/nocloud/s/n/meta-data"


def test_full_redaction_removes_tokens_keys_queries_and_pairs() -> None:
    pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----"
    text = f"GET http://h:1/{TOKEN}/x.iso?sig=abc failed; password=hunter2 {pem} done"
    out = redact(text)
    assert out == ("GET http://h:1/<token>/x.iso?[query removed] failed; [secret removed] [PEM block removed] done")
    for secret in (TOKEN, "sig=abc", "hunter2", "MIIEvQIBADANBg"):
        assert secret not in out


def test_the_report_removes_seed_tokens_too() -> None:
    """The report's scrub used to keep a token in a URL path (it removed only queries)."""
    from edgefleet.report import scrub

    assert TOKEN not in scrub(f"InsertMedia http://127.0.0.1:4444/{TOKEN}/releases/v1/talos.iso: HTTP 500")


def test_one_redactor_everywhere() -> None:
    from edgefleet.report import scrub
    from edgefleet.rollout.executor import redact as engine_redact
    from edgefleet.seeds.netseed import redact_seed_url

    assert scrub is redact
    assert engine_redact is redact_tokens and redact_seed_url is redact_tokens
    own = [p.relative_to(ROOT) for p in (ROOT / "edgefleet").rglob("*.py")
           if p.name != "redact.py" and re.search(r"def (redact|scrub)\w*\(", p.read_text(encoding="utf-8"))]
    assert own == []
    assert SEED_TOKEN.pattern.count("{43}") == 1
