"""Module and function sizes in ``edgefleet/``: the figures behind "no module over about 500 lines,
no function over about 60 (docstrings aside)".

* a module's size is its number of lines (what ``wc -l`` says);
* a function's size is its lines from ``def`` (decorators excluded) to its last line, minus the
  lines of its docstring and of the docstrings of functions and classes nested in it; nested
  functions count as part of the function that holds them, methods as functions of their own;
* two kinds of module are left out, each for the reason ``EXEMPT`` gives: generated code and
  alembic migration revisions.

``python -m tests.layout [--top N]`` prints the largest modules and functions and the ones over the
limits; ``tests/unit/test_layout.py`` holds every module measured to the limits.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["EXEMPT", "FUNCTION_LIMIT", "MODULE_LIMIT", "Function", "Module", "exempt", "functions", "measure",
           "modules", "over_limits"]

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "edgefleet"
MODULE_LIMIT = 500
FUNCTION_LIMIT = 60

# The modules left out of the measure, and why: neither is code a person reads to follow the logic.
EXEMPT = {
    # protoc writes them from the .proto files; they are regenerated, never edited by hand.
    "generated protobuf code (*_pb2*.py)": lambda rel: "_pb2" in rel.name,
    # Each revision is a table of schema operations (create_table with its columns, indexes),
    # written once and never changed after it ships: cutting upgrade() into pieces would scatter one
    # table's definition without making anything easier to find.
    "alembic migration revisions (state/migrations/versions/)": lambda rel: (
        rel.parent == Path("state/migrations/versions") and rel.name != "__init__.py"),
}


@dataclass(frozen=True, slots=True)
class Function:
    module: str  # edgefleet.rollout.executor
    name: str  # Executor._run_store
    line: int
    lines: int  # docstrings excluded

    def __str__(self) -> str:
        return f"{self.module}:{self.line} {self.name}"


@dataclass(frozen=True, slots=True)
class Module:
    name: str
    path: Path
    lines: int
    functions: tuple[Function, ...]

    @property
    def largest_function(self) -> int:
        return max((f.lines for f in self.functions), default=0)

    @property
    def within_limits(self) -> bool:
        return self.lines <= MODULE_LIMIT and self.largest_function <= FUNCTION_LIMIT


def _docstring_lines(node: ast.AST) -> int:
    """Lines taken by the docstrings of ``node`` and of every function or class inside it."""
    total = 0
    for n in ast.walk(node):
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and n.body:
            first = n.body[0]
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str) and first.end_lineno is not None):
                total += first.end_lineno - first.lineno + 1
    return total


def _functions(module: str, body: list[ast.stmt], prefix: str = "") -> Iterator[Function]:
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None:
            size = node.end_lineno - node.lineno + 1 - _docstring_lines(node)
            yield Function(module, prefix + node.name, node.lineno, size)
        elif isinstance(node, ast.ClassDef):
            yield from _functions(module, node.body, f"{prefix}{node.name}.")


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def measure(path: Path, root: Path = ROOT) -> Module:
    text = path.read_text(encoding="utf-8")
    name = _module_name(path, root)
    return Module(name, path, len(text.splitlines()), tuple(_functions(name, ast.parse(text).body)))


def exempt(path: Path, package: Path = PACKAGE) -> str | None:
    """Why the module at ``path`` is left out of the measure (an ``EXEMPT`` key), or None."""
    rel = path.relative_to(package)
    return next((why for why, applies in EXEMPT.items() if applies(rel)), None)


def modules(package: Path = PACKAGE, root: Path = ROOT) -> list[Module]:
    """Every module of the package but the ``EXEMPT`` ones, largest first."""
    found = [measure(p, root) for p in sorted(package.rglob("*.py")) if exempt(p, package) is None]
    return sorted(found, key=lambda m: (-m.lines, m.name))


def over_limits(mods: list[Module]) -> list[str]:
    """Each module over ``MODULE_LIMIT`` lines and each function over ``FUNCTION_LIMIT``, with its size."""
    out = [f"{m.name}: {m.lines} lines (limit {MODULE_LIMIT})" for m in mods if m.lines > MODULE_LIMIT]
    out += [f"{f}: {f.lines} lines (limit {FUNCTION_LIMIT}, docstrings aside)"
            for f in functions(mods) if f.lines > FUNCTION_LIMIT]
    return out


def functions(mods: list[Module]) -> list[Function]:
    return sorted((f for m in mods for f in m.functions), key=lambda f: (-f.lines, str(f)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.layout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", type=int, default=10, help="how many of the largest to list (default 10)")
    args = parser.parse_args(argv)
    mods = modules()
    funcs = functions(mods)
    over_m = [m for m in mods if m.lines > MODULE_LIMIT]
    over_f = [f for f in funcs if f.lines > FUNCTION_LIMIT]
    print(f"edgefleet/: {len(mods)} modules, {sum(m.lines for m in mods)} lines, {len(funcs)} functions "
          f"({'; '.join(EXEMPT)} left out)")
    print(f"modules over {MODULE_LIMIT} lines: {len(over_m)}; functions over {FUNCTION_LIMIT} lines "
          f"(docstrings aside): {len(over_f)}")
    print("\nlargest modules (lines):")
    for m in mods[:args.top]:
        print(f"  {m.lines:5d}  {m.name}{'  OVER' if m.lines > MODULE_LIMIT else ''}")
    print("\nlargest functions (lines without docstrings):")
    for f in funcs[:max(args.top, len(over_f))]:
        print(f"  {f.lines:5d}  {f}{'  OVER' if f.lines > FUNCTION_LIMIT else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
