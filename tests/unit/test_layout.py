"""Module and function sizes (``tests/layout.py``; print them with ``python -m tests.layout``), and
the package docstrings that say in three lines what lives in each package.

``DONE`` lists the modules held to the limits (no module over 500 lines, no function over 60,
docstrings aside). A module split to fit joins the list, and so does every module it was split
into; a module leaves it only by being removed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.layout import FUNCTION_LIMIT, MODULE_LIMIT, PACKAGE, _functions, functions, measure, modules

DONE = (
    "edgefleet",
    "edgefleet.atomic",
    "edgefleet.cli",
    "edgefleet.cli.__main__",
    "edgefleet.cli._common",
    "edgefleet.cli.inventory",
    "edgefleet.cli.release",
    "edgefleet.cli.report",
    "edgefleet.cli.rollout",
    "edgefleet.cli.seed",
    "edgefleet.cli.sim",
    "edgefleet.cli.talos",
    "edgefleet.errors",
    "edgefleet.health",
    "edgefleet.health.cluster",
    "edgefleet.health.probes",
    "edgefleet.health.storeapi",
    "edgefleet.inventory",
    "edgefleet.inventory.ansible",
    "edgefleet.isodates",
    "edgefleet.outpaths",
    "edgefleet.prefect_server",
    "edgefleet.redact",
    "edgefleet.redfish",
    "edgefleet.redfish.driver",
    "edgefleet.redfish.quirks",
    "edgefleet.releases",
    "edgefleet.releases.catalog",
    "edgefleet.releases.image",
    "edgefleet.releases.packer",
    "edgefleet.releases.reproducible",
    "edgefleet.releases.template",
    "edgefleet.releases.upstream",
    "edgefleet.report",
    "edgefleet.rollout",
    "edgefleet.rollout.endpoints",
    "edgefleet.rollout.gates",
    "edgefleet.rollout.hooks",
    "edgefleet.rollout.operations",
    "edgefleet.safeyaml",
    "edgefleet.schedule",
    "edgefleet.schedule.groups",
    "edgefleet.schedule.windows",
    "edgefleet.secrets",
    "edgefleet.seeds",
    "edgefleet.seeds.iso",
    "edgefleet.seeds.netseed",
    "edgefleet.seeds.render",
    "edgefleet.settings",
    "edgefleet.sim",
    "edgefleet.sim.boot",
    "edgefleet.sim.build",
    "edgefleet.sim.k8s",
    "edgefleet.sim.media",
    "edgefleet.sim.netseed",
    "edgefleet.sim.oracle",
    "edgefleet.sim.scenario",
    "edgefleet.sim.talos_serve",
    "edgefleet.sim.talos_wiring",
    "edgefleet.state",
    "edgefleet.state.db",
    "edgefleet.talos",
    "edgefleet.talos.api",
    "edgefleet.talos.certs",
    "edgefleet.talos.clientconfig",
    "edgefleet.talos.inband",
    "edgefleet.talos.proto",
    "edgefleet.talos.proto.common",
    "edgefleet.talos.proto.generate",
    "edgefleet.talos.proto.machine",
)

_ALL = {m.name: m for m in modules()}


def test_every_module_listed_as_done_exists() -> None:
    assert sorted(set(DONE) - set(_ALL)) == []


@pytest.mark.parametrize("name", DONE)
def test_done_modules_stay_within_the_limits(name: str) -> None:
    m = _ALL[name]
    assert m.lines <= MODULE_LIMIT, f"{name}: {m.lines} lines (limit {MODULE_LIMIT}): split it"
    over = [f"{f} ({f.lines} lines)" for f in m.functions if f.lines > FUNCTION_LIMIT]
    assert over == [], f"functions over {FUNCTION_LIMIT} lines (docstrings aside)"


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
