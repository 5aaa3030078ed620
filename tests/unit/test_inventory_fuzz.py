"""Hypothesis feeds malformed inventories: always a located InventoryError, never a traceback."""

from __future__ import annotations

import copy
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.errors import InventoryError
from edgefleet.inventory.load import load_fleet

BASE_FLEET = {
    "fleet": {"name": "fuzz"},
    "defaults": {
        "maintenance_windows": [{"days": ["mon"], "start": "22:00", "end": "04:00"}],
        "network": {"dns": ["10.0.0.53"]},
        "node_defaults": {"bmc": {"credentials": {"username": "u", "password_env": "PW"}}},
    },
}
BASE_STORE: dict[str, Any] = {
    "id": "dk-100", "name": "Test", "country": "DK", "region": "nordics", "timezone": "Europe/Copenhagen",
    "network": {"subnet": "10.50.1.0/24", "gateway": "10.50.1.1"},
    "cluster": {"name": "dk-100", "vip": "10.50.1.10"},
    "nodes": [
        {"name": f"dk-100-n{i}", "role": "controlplane", "mac": f"02:aa:00:00:00:0{i}", "ip": f"10.50.1.1{i}",
         "bmc": {"url": f"https://10.50.1.10{i}"}}
        for i in (1, 2, 3)
    ],
}

junk = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=True), st.text(max_size=30),
    st.lists(st.text(max_size=5), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.sampled_from(["10.50.1.300", "Mars/Olympus", "02:aa", "::1", "25:99", "-bad-", "http://x", "NO", ""]),
)


def _paths(d: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(d, dict):
        for k, v in d.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out += _paths(v, (*prefix, i))
    return out


ALL_PATHS = _paths(BASE_STORE)


@st.composite
def mutated_store(draw: st.DrawFn) -> tuple[list[Any], str | None]:
    store = copy.deepcopy(BASE_STORE)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(ALL_PATHS))
        parent: Any = store
        try:
            for p in path[:-1]:
                parent = parent[p]
            action = draw(st.sampled_from(["replace", "delete", "duplicate"]))
            if action == "delete" and isinstance(parent, dict):
                parent.pop(path[-1], None)
            elif action == "duplicate" and isinstance(parent, list):
                parent.append(copy.deepcopy(parent[path[-1]]))
            else:
                parent[path[-1]] = draw(junk)
        except (KeyError, IndexError, TypeError):
            pass
    stores: list[Any] = [store]
    if draw(st.booleans()):
        stores.append(copy.deepcopy(store))  # a duplicate store
    raw_text = draw(st.one_of(st.none(), st.text(max_size=80)))  # sometimes: not YAML at all
    return stores, raw_text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_store())
def test_malformed_inventories_give_located_errors(case: tuple[list[Any], str | None]) -> None:
    stores, raw_text = case
    root = Path(tempfile.mkdtemp())
    try:
        (root / "stores").mkdir()
        (root / "fleet.yml").write_text(yaml.safe_dump(BASE_FLEET))
        text = raw_text if raw_text is not None else yaml.safe_dump({"stores": stores})
        (root / "stores" / "s.yml").write_text(text)
        before = sorted(p.name for p in root.rglob("*"))
        try:
            fleet = load_fleet(root)
        except InventoryError as e:
            assert e.problems
            for p in e.problems:
                assert p.file, p
                assert p.message and "Traceback" not in p.message
        else:
            assert set(fleet.stores) <= {"dk-100"}
        assert sorted(p.name for p in root.rglob("*")) == before  # nothing written
    finally:
        shutil.rmtree(root)
