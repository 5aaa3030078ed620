"""The layering: import-linter's contracts (``.importlinter``) hold, the pure core stays pure when
really imported (package ``__init__`` modules included, which import-linter does not follow), the
Redfish and Kubernetes vocabularies stay in their adapters, the flows read the environment from
``edgefleet.settings``, and no type or constant name means two things."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "edgefleet"

PURE_CORE = (
    "edgefleet.errors",
    "edgefleet.isodates",
    "edgefleet.inventory.model",
    "edgefleet.inventory.ansible",
    "edgefleet.inventory.patterns",
    "edgefleet.rollout.plan",
    "edgefleet.rollout.gates",
    "edgefleet.rollout.states",  # the state machine (checked once it exists)
    "edgefleet.schedule.windows",
    "edgefleet.schedule.groups",
    "edgefleet.seeds.render",
    "edgefleet.talos.config",
    "edgefleet.health.cluster",
    "edgefleet.trains.model",
    "edgefleet.trains.decide",
    "edgefleet.trains.stages",
)
# Third-party ones: the standard library imports socket or subprocess for its own needs (the
# contract checks that edgefleet's pure modules do not).
IO_LIBRARIES = ("httpx", "httpcore", "sqlalchemy", "grpc", "prefect", "uvicorn", "starlette", "ansible_runner",
                "pycdlib", "hcl2")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_import_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    r = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert ", 0 broken." in r.stdout


def test_pure_core_imports_no_io_library_when_imported() -> None:
    """A real import (in a fresh interpreter) of the pure modules loads none of the I/O libraries."""
    present = [m for m in PURE_CORE if importlib.util.find_spec(m) is not None]
    assert len(present) >= len(PURE_CORE) - 1
    code = ("import json, sys\n"
            f"for m in {present!r}: __import__(m)\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {IO_LIBRARIES!r})))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=120, check=True)
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []


def _strings(path: Path) -> list[tuple[int, str]]:
    """String constants of a module, docstrings left out (they may name what other modules do)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


@pytest.mark.parametrize(("words", "homes"), [
    (("/redfish/v1", "@odata.id", "ComputerSystem.Reset", "VirtualMedia.InsertMedia"), ("redfish", "sim")),
    (("/api/v1/nodes", "/readyz"), ("health", "sim")),
], ids=["redfish", "kubernetes"])
def test_protocol_vocabulary_stays_in_its_adapter(words: tuple[str, ...], homes: tuple[str, ...]) -> None:
    """Only the Redfish adapter (and the simulator playing BMCs) speaks Redfish; only the
    Kubernetes adapter (and the simulator playing the APIs) speaks to Kubernetes."""
    stray = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in homes or "_pb2" in path.name:
            continue
        stray += [f"{rel}:{line}: {text!r}" for line, text in _strings(path) if any(w in text for w in words)]
    assert stray == []


def test_flows_read_the_environment_from_settings_not_the_cli() -> None:
    for path in sorted((ROOT / "flows").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("edgefleet.cli"), f"{path.name}:{node.lineno} imports {node.module}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("edgefleet.cli") for a in node.names), f"{path.name}:{node.lineno}"


def _definitions() -> dict[str, list[str]]:
    """Top-level classes and UPPER_CASE constants of edgefleet and the flows -> where defined."""
    where: dict[str, list[str]] = defaultdict(list)
    paths = [p for p in PACKAGE.rglob("*.py") if "_pb2" not in p.name] + sorted((ROOT / "flows").glob("*.py"))
    for path in paths:
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            names: list[str] = []
            if isinstance(node, ast.ClassDef):
                names = [node.name]
            elif isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name) and t.id.isupper()]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id.isupper():
                names = [node.target.id]
            where.update({n: [*where[n], str(path.relative_to(ROOT))] for n in names if not n.startswith("_")})
    return where


def test_no_class_name_means_two_things() -> None:
    twice = {n: w for n, w in _definitions().items() if len(w) > 1 and n[:1].isupper() and not n.isupper()}
    assert twice == {}


@pytest.mark.parametrize("name", ["Verdict", "WaveDecision", "SimClock", "Role", "RELEASE_LABEL", "ClientCert"])
def test_names_once_defined_twice_have_one_definition(name: str) -> None:
    assert len(_definitions().get(name, [])) <= 1, _definitions().get(name)
