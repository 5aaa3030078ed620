"""The seed server's pure decisions (``edgefleet.seeds.tokens``): request paths, reimage grants,
and that the module stays pure (no I/O library imported)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import edgefleet.seeds.tokens as tokens_module
from edgefleet.errors import SeedError
from edgefleet.seeds.tokens import Grants, Target, check_token, mint_token, split_target

SECRET = b"k" * 32


@pytest.mark.parametrize(("raw", "expected"), [
    ("/tok/seeds/a.iso", Target("tok", "/seeds/a.iso", ["seeds", "a.iso"], "seeds/a.iso")),
    ("/tok/with%20space%20%25.txt", Target("tok", "/with%20space%20%25.txt", ["with space %.txt"],
                                          "with space %.txt")),
    ("/tok/seeds%2F..%2Fx", Target("tok", "/seeds%2F..%2Fx")),  # an encoded slash is refused, not decoded
    ("/tok/%2e%2e/secret", Target("tok", "/%2e%2e/secret")),
    ("/tok/..%5csecret", Target("tok", "/..%5csecret")),
    ("/tok//etc/passwd", Target("tok", "//etc/passwd")),
    ("/tok/a/./b", Target("tok", "/a/./b")),
    ("/tok/%00", Target("tok", "/%00")),
    ("/tok/%ff", Target("tok", "/%ff")),  # not UTF-8
    ("/tok", None),
    ("/", None),
    ("tok/a", None),
])
def test_split_target(raw: str, expected: Target | None) -> None:
    assert split_target(raw) == expected


def test_grants_bind_a_node_s_urls_to_its_reimage() -> None:
    grants = Grants()
    plain = mint_token(SECRET, "seeds/a.iso", "n1", 1000)
    assert grants.check(SECRET, plain, "seeds/a.iso", 1.0) == ("n1", "")
    grants.begin("n1", "g1")
    assert grants.current("n1") == "g1" and grants.current("n2") == ""
    bound = mint_token(SECRET, "seeds/a.iso", "n1", 1000, grants.current("n1"))
    assert grants.check(SECRET, bound, "seeds/a.iso", 1.0) == ("n1", "")
    assert grants.check(SECRET, plain, "seeds/a.iso", 1.0) == (None, "token not valid for this path")
    grants.begin("n1", "g2")  # the next reimage: the previous one's URLs are revoked
    assert grants.check(SECRET, bound, "seeds/a.iso", 1.0) == (
        None, "token revoked: the reimage of n1 it was issued for has ended")
    grants.end("n1")
    grants.end("n1")  # harmless
    assert grants.check(SECRET, plain, "seeds/a.iso", 1.0) == (
        None, "token revoked: no reimage of n1 is in progress")
    other = mint_token(SECRET, "seeds/b.iso", "n2", 1000)
    assert grants.check(SECRET, other, "seeds/b.iso", 1.0) == ("n2", "")  # other nodes are untouched
    assert check_token(SECRET, other, "seeds/b.iso", 1000.0) == (None, "token expired")
    with pytest.raises(SeedError):
        grants.begin("", "g")
    with pytest.raises(SeedError):
        grants.begin("n1", "")


def test_grants_remember_only_the_last_few_ended_ones() -> None:
    grants = Grants()
    first = None
    for i in range(6):
        grants.begin("n1", f"g{i}")
        if i == 0:
            first = mint_token(SECRET, "x", "n1", 1000, "g0")
    assert first is not None
    # g0 is beyond what is remembered: refused all the same, only the reason is the generic one
    assert grants.check(SECRET, first, "x", 1.0) == (None, "token not valid for this path")


_IO_MODULES = {"asyncio", "socket", "ssl", "os", "pathlib", "io", "subprocess", "threading", "time", "http",
               "urllib.request", "httpx", "uvicorn", "starlette", "h11", "sqlalchemy", "prefect", "shutil"}


def test_tokens_module_is_pure() -> None:
    tree = ast.parse(Path(tokens_module.__file__).read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert not {m for m in imported if m in _IO_MODULES or m.split(".")[0] in _IO_MODULES}, imported
