"""``edgefleet.inventory.patterns.select`` says what Ansible says: random host patterns, evaluated by
``select`` over the fleet and by Ansible's own inventory manager over the fleet's Ansible export
(hosts are nodes, every store is a group ``store_<id>``); the stores of the hosts Ansible selects
must be exactly the stores ``select`` returns.

What is compared: groups (country, region, ring, canary, a custom group with a '-' in its name,
``all``, ``ungrouped``), store ids (written ``dk-003`` or ``store_dk_003``; Ansible is given the
group), globs and ~regexes over group names and store ids, unions, ``&`` and ``!``, with ',' or
':' between parts. Left out: positions (``group[0:2]``), which Ansible counts in hosts (nodes) and
``select`` in stores; the unit tests cover them. A glob or regex is compared when its answer does
not depend on that difference: Ansible also matches globs against host names, so a glob is drawn
either with a literal '_' (no node name has one) or as a prefix no longer than a store id followed
by '*' (the sample's node names are ``<store id>-<suffix>``, so such a glob matches a store's nodes
exactly when it matches the store's id).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edgefleet.errors import InputError
from edgefleet.inventory.ansible import group_name, render_ansible_inventory, to_static_inventory
from edgefleet.inventory.load import load_fleet
from edgefleet.inventory.model import Fleet
from edgefleet.inventory.patterns import select
from tests.helpers import SAMPLE_INVENTORY, VENV_BIN

DRIVER = Path(__file__).with_name("ansible_patterns_driver.py")


def _fleet() -> Fleet:
    """The sample fleet, with dk-001 a ``canary: true`` store and dk-001, dk-004 in the custom group
    ``pilot-stores`` (exported to Ansible as ``pilot_stores``)."""
    base = load_fleet(SAMPLE_INVENTORY)
    stores = dict(base.stores)
    stores["dk-001"] = stores["dk-001"].model_copy(update={"canary": True, "groups": ["pilot-stores"]})
    stores["dk-004"] = stores["dk-004"].model_copy(update={"groups": ["pilot-stores"]})
    return base.model_copy(update={"stores": stores})


FLEET = _fleet()
EXPORT = render_ansible_inventory(FLEET)
STORE_OF = {host: hv["edgefleet_store"] for host, hv in EXPORT["_meta"]["hostvars"].items()}
STORES = sorted(FLEET.stores)
GROUPS = sorted({g for s in FLEET.stores.values() for g in s.all_groups})  # as the inventory writes them
ANSIBLE_NAMES = sorted({group_name(g) for g in GROUPS} | {f"store_{group_name(s)}" for s in STORES}
                       | {"all", "ungrouped"})
ID_LENGTH = min(len(s) for s in STORES)


class Ansible:
    """Ansible's inventory manager in its own process, answering one pattern per line."""

    def __init__(self, inventory: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, str(DRIVER), str(inventory)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        assert json.loads(self.stdout.readline()) == {"hosts": len(STORE_OF)}

    def hosts(self, pattern: str) -> list[str]:
        self.stdin.write(json.dumps(pattern) + "\n")
        self.stdin.flush()
        answer: list[str] = json.loads(self.stdout.readline())
        return answer

    def stores(self, pattern: str) -> set[str]:
        return {STORE_OF[h] for h in self.hosts(pattern)}

    def close(self) -> None:
        self.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def ansible_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("ansible")
    return {**os.environ, "ANSIBLE_LOCAL_TEMP": str(tmp / "tmp"), "ANSIBLE_HOME": str(tmp / "home"),
            "ANSIBLE_INVENTORY_ENABLED": "yaml", "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def export_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fleet as the static YAML inventory ``edgefleet inventory ansible --yaml`` writes."""
    path = tmp_path_factory.mktemp("export") / "fleet.yml"
    path.write_text(yaml.safe_dump(to_static_inventory(EXPORT), sort_keys=False))
    return path


@pytest.fixture(scope="module")
def ansible(export_file: Path, ansible_env: dict[str, str]) -> Iterator[Ansible]:
    a = Ansible(export_file, ansible_env)
    yield a
    a.close()


# -- pattern parts, each drawn as (what select is given, what Ansible is given) ----------------------

@st.composite
def _group(draw: st.DrawFn) -> tuple[str, str]:
    g = draw(st.sampled_from([*GROUPS, "all", "ungrouped"]))
    return draw(st.sampled_from([g, group_name(g)])), group_name(g)


@st.composite
def _store(draw: st.DrawFn) -> tuple[str, str]:
    s = draw(st.sampled_from(STORES))
    exported = f"store_{group_name(s)}"
    return draw(st.sampled_from([s, exported])), exported


@st.composite
def _prefix(draw: st.DrawFn, wildcard: str) -> str:
    """A prefix of a store id or an Ansible group name, with some characters made wildcards (or, in
    a glob, character classes); drawn only where node names cannot tell it apart (see the module
    docstring)."""
    source = draw(st.sampled_from([*STORES, *ANSIBLE_NAMES]))
    n = draw(st.integers(0, len(source)))
    out, literal_underscore = [], False
    for c in source[:n]:
        how = draw(st.sampled_from(["keep", "keep", "keep", "any", "class"] if wildcard == "?" else
                                   ["keep", "keep", "keep", "any"]))
        if how == "keep":
            out.append(c)
            literal_underscore |= c == "_"
        elif how == "any":
            out.append(wildcard)
        else:
            out.append(f"[{c}{draw(st.sampled_from('_0123456789abcdefghijklmnopqrstuvwxyz'))}]")
    assume(n <= ID_LENGTH or literal_underscore)
    return "".join(out)


@st.composite
def _glob(draw: st.DrawFn) -> tuple[str, str]:
    glob = draw(_prefix("?")) + "*"
    return glob, glob


@st.composite
def _regex(draw: st.DrawFn) -> tuple[str, str]:
    alternatives = draw(st.lists(_prefix("."), min_size=1, max_size=3))
    exact = draw(st.sampled_from([n for n in ANSIBLE_NAMES if "_" in n]))
    if draw(st.booleans()):
        alternatives.append(exact + "$")  # a whole group name, anchored at both ends
    regex = "~" + (alternatives[0] if len(alternatives) == 1 else f"({'|'.join(alternatives)})")
    return regex, regex


_PART = st.tuples(st.sampled_from(["", "", "&", "!"]), st.one_of(_group(), _store(), _glob(), _regex()))


@st.composite
def patterns(draw: st.DrawFn) -> tuple[str, str]:
    parts = draw(st.lists(_PART, min_size=1, max_size=5))
    sep = draw(st.sampled_from([",", ":", " , "]))
    ours = sep.join(op + mine for op, (mine, _) in parts)
    theirs = sep.join(op + exported for op, (_, exported) in parts)
    return ours, theirs


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much,
                                                                  HealthCheck.too_slow])
@given(pattern=patterns())
def test_select_agrees_with_ansible(ansible: Ansible, pattern: tuple[str, str]) -> None:
    ours, theirs = pattern
    chosen = select(FLEET, ours)
    assert set(chosen) == ansible.stores(theirs), (ours, theirs)
    assert chosen == [s for s in FLEET.stores if s in chosen]  # inventory order, no repeats


@st.composite
def _typo(draw: st.DrawFn) -> str:
    word = draw(st.sampled_from([*STORES, *GROUPS]))
    at = draw(st.integers(0, len(word) - 1))
    c = draw(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789_-"))
    how = draw(st.sampled_from(["drop", "replace", "insert"]))
    typo = {"drop": word[:at] + word[at + 1:], "replace": word[:at] + c + word[at + 1:],
            "insert": word[:at] + c + word[at:]}[how]
    names = {*STORES, *GROUPS, *ANSIBLE_NAMES}
    assume(typo and typo not in names and not re.match(r"^[&!]", typo))
    return typo


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(typo=_typo(), where=st.sampled_from(["{}", "country_dk:&{}", "all,!{}"]))
def test_a_name_ansible_ignores_is_refused(ansible: Ansible, typo: str, where: str) -> None:
    """Ansible ignores a part that names nothing (with a warning); ``select`` refuses it, naming it."""
    assert ansible.hosts(typo) == []
    with pytest.raises(InputError) as e:
        select(FLEET, where.format(typo))
    assert repr(typo) in str(e.value)


@pytest.mark.parametrize("pattern", ["country_dk:&ring_ring2:!store_dk_003", "d?-*,!~(de|dk)-00[13],&*canary",
                                     "pilot_stores:ring_canary"])
def test_the_driver_answers_as_the_ansible_command(ansible: Ansible, export_file: Path,
                                                   ansible_env: dict[str, Any], pattern: str) -> None:
    """The in-process answers are the ones ``ansible PATTERN --list-hosts`` prints."""
    r = subprocess.run([str(VENV_BIN / "ansible"), "-i", str(export_file), pattern, "--list-hosts"],
                       capture_output=True, text=True, timeout=120, env=ansible_env)
    assert r.returncode == 0, r.stderr
    listed = [line.strip() for line in r.stdout.splitlines()[1:] if line.strip()]
    assert re.match(rf"\s*hosts \({len(listed)}\):", r.stdout.splitlines()[0])
    assert listed == ansible.hosts(pattern)
    assert listed  # the three patterns select something
    assert set(select(FLEET, pattern)) == {STORE_OF[h] for h in listed}
