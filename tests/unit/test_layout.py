"""Module and function sizes (``tests/layout.py``; print them with ``python -m tests.layout``), and
the package docstrings that say in three lines what lives in each package.

Every module of ``edgefleet/`` is held to the limits (no module over 500 lines, no function over
60, docstrings aside), but the kinds ``tests.layout.EXEMPT`` leaves out, each with its reason there:
generated protobuf code and alembic migration revisions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.layout import (
    EXEMPT,
    FUNCTION_LIMIT,
    MODULE_LIMIT,
    PACKAGE,
    _functions,
    exempt,
    functions,
    measure,
    modules,
    over_limits,
)

_ALL = {m.name: m for m in modules()}


@pytest.mark.parametrize("name", sorted(_ALL))
def test_every_module_stays_within_the_limits(name: str) -> None:
    assert over_limits([_ALL[name]]) == [], "split it by meaning (see python -m tests.layout)"


def test_the_limits_catch_a_long_module_and_a_long_function(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""Pkg."""\n')
    (pkg / "long.py").write_text("x = 1\n" * (MODULE_LIMIT + 1))
    def body(n: int) -> str:
        return "".join(f"    a{i} = {i}\n" for i in range(n))

    # f: its def line and 60 statements (its docstring aside): 61 lines; g: 60 lines, at the limit
    (pkg / "fn.py").write_text(f'def f() -> None:\n    """Doc."""\n{body(FUNCTION_LIMIT)}\n\n'
                               f"def g() -> None:\n{body(FUNCTION_LIMIT - 1)}")
    got = over_limits(modules(pkg, root=tmp_path))
    assert got == [f"pkg.long: {MODULE_LIMIT + 1} lines (limit {MODULE_LIMIT})",
                   f"pkg.fn:1 f: {FUNCTION_LIMIT + 1} lines (limit {FUNCTION_LIMIT}, docstrings aside)"]


def test_only_generated_code_and_migration_revisions_are_left_out() -> None:
    left = {p.relative_to(PACKAGE).as_posix(): exempt(p) for p in PACKAGE.rglob("*.py") if exempt(p)}
    assert set(left.values()) == set(EXEMPT), "each exemption applies to some module (else drop it)"
    for rel, why in left.items():
        assert ("_pb2" in rel and "protobuf" in why) or (
            rel.startswith("state/migrations/versions/") and "alembic" in why), rel
    # the package and the migration environment beside the revisions are measured like any module
    assert exempt(PACKAGE / "state/migrations/versions/__init__.py") is None
    assert exempt(PACKAGE / "state/migrations/env.py") is None
    assert len(_ALL) + len(left) == len(list(PACKAGE.rglob("*.py")))


def test_the_measure(tmp_path: Path) -> None:
    src = tmp_path / "sample.py"
    src.write_text('"""Module doc."""\n\n\nclass A:\n    """Doc\n    on two lines."""\n\n'
                   "    def m(self) -> int:\n        '''One line.'''\n        x = 1\n\n"
                   "        def inner() -> int:\n            '''Inner doc.'''\n            return x\n"
                   "        return inner()\n\n\n@staticmethod\ndef f() -> None:\n    pass\n")
    fs = list(_functions("sample", ast.parse(src.read_text()).body))
    # A.m: 8 lines from def to return, minus its own docstring and the nested one; f: def and pass
    assert [(f.name, f.lines) for f in fs] == [("A.m", 6), ("f", 2)]
    got = measure(PACKAGE / "redact.py")
    assert got.lines == len((PACKAGE / "redact.py").read_text().splitlines()) and got.functions
    assert functions([got])[0].lines >= functions([got])[-1].lines


def _packages() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("__init__.py"))


@pytest.mark.parametrize("init", _packages(), ids=lambda p: str(p.parent.relative_to(PACKAGE.parent)))
def test_each_package_says_in_three_lines_what_lives_there(init: Path) -> None:
    doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")), clean=False)
    assert doc, f"{init} has no docstring"
    assert len(doc.strip().splitlines()) <= 3, f"{init}: {len(doc.strip().splitlines())} lines"
