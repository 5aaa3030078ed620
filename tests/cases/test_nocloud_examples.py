"""The network-config examples in nocloud/ are what the renderer makes of the sample inventory."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgefleet.inventory.load import load_fleet
from edgefleet.seeds.render import render_network_config
from tests.helpers import REPO, SAMPLE_INVENTORY

EXAMPLES = sorted((REPO / "nocloud" / "network-config").glob("*.yaml"))


def test_there_are_examples_of_every_kind() -> None:
    texts = [p.read_text() for p in EXAMPLES]
    assert len(texts) >= 4
    assert any("vlans:" in t for t in texts) and any("bonds:" in t for t in texts)
    assert any("gateway6:" in t for t in texts)
    # dual-stack (an IPv4 route and gateway6) and IPv6-only (gateway6, no IPv4 at all)
    assert any("gateway6:" in t and "0.0.0.0/0" in t for t in texts)
    assert any("gateway6:" in t and not re.search(r"\b\d+\.\d+\.\d+\.\d+\b", t) for t in texts)


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_matches_the_renderer(example: Path) -> None:
    fleet = load_fleet(SAMPLE_INVENTORY)
    node_name = example.stem
    store = next(s for s in fleet.stores.values() if any(n.name == node_name for n in s.nodes))
    node = next(n for n in store.nodes if n.name == node_name)
    assert render_network_config(store, node) == example.read_bytes()
