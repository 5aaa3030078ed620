"""cloud-init's own renderers accept the network-config examples in nocloud/ (what the sample
inventory renders for a plain node, a VLAN, a bond and a dual-stack node)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO

EXAMPLES = sorted((REPO / "nocloud" / "network-config").glob("*.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
@pytest.mark.parametrize(("distro", "renderer"), [("debian", "networkd"), ("debian", "eni")])
def test_cloud_init_renders_the_example(cloudinit: Any, example: Path, tmp_path: Path, distro: str,
                                        renderer: str) -> None:
    out = tmp_path / "out"
    proc = cloudinit.net_convert(example, out, distro=distro, output=renderer)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rendered = "\n".join(p.read_text() for p in out.rglob("*") if p.is_file())
    for address in re.findall(r"^\s*- ([0-9a-f.:]+)/\d+$", example.read_text(), flags=re.M):
        assert address in rendered, (address, rendered[:2000])
