"""``edgefleet seed nocloud-url``: the ds=nocloud-net strings an operator sets at a talos-api node's
first install: stable across calls, the same URLs the engine uses at reimage time, and clear
errors for a wrong store, node or a missing base URL."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgefleet.cli import app
from edgefleet.errors import EdgefleetError
from edgefleet.inventory.load import load_fleet
from edgefleet.rollout.executor import SEED_KEY_FILE, nocloud_urls
from tests.contract.rollout_world import make_mixed_inventory


def _run(*args: str) -> tuple[int, str]:
    """Exit code and output as ``edgefleet`` gives them (an EdgefleetError: its exit code and message)."""
    r = CliRunner().invoke(app, list(args))
    if isinstance(r.exception, EdgefleetError):
        return r.exception.exit_code, str(r.exception)
    return r.exit_code, r.output


def test_prints_stable_urls_the_engine_uses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_mixed_inventory(tmp_path / "inv")
    home = tmp_path / "home"
    monkeypatch.setenv("EDGEFLEET_HOME", str(home))
    args = ["seed", "nocloud-url", "dk-0102", "-i", str(tmp_path / "inv"), "--base-url", "https://seeds.example.net",
            "--json"]
    code, out = _run(*args)
    assert code == 0, out
    rows = json.loads(out)["nodes"]
    assert sorted(rows) == ["dk-0102-n1", "dk-0102-n2", "dk-0102-n3"]
    for node, ds in rows.items():
        assert re.fullmatch(rf"ds=nocloud-net;s=https://seeds\.example\.net/[\w.-]+/nocloud/dk-0102/{node}/", ds), ds
    assert stat.S_IMODE((home / SEED_KEY_FILE).stat().st_mode) == 0o600
    assert json.loads(_run(*args)[1])["nodes"] == rows  # same key: same URLs on every call
    store = load_fleet(tmp_path / "inv").stores["dk-0102"]
    engine_urls = nocloud_urls(home, store, "https://seeds.example.net")
    assert rows == {n: f"ds=nocloud-net;s={u}" for n, u in engine_urls.items()}

    code, out = _run("seed", "nocloud-url", "dk-0102", "-i", str(tmp_path / "inv"), "--base-url",
                     "https://seeds.example.net", "--node", "dk-0102-n2")
    assert code == 0 and out.split() == ["dk-0102-n2", rows["dk-0102-n2"]], out


@pytest.mark.parametrize(("args", "message"), [
    (["no-such-store", "--base-url", "https://seeds.example.net"], "unknown store 'no-such-store'"),
    (["dk-0102", "--base-url", "https://seeds.example.net", "--node", "dk-0102-n9"], "has no node 'dk-0102-n9'"),
    (["dk-0102"], "store dk-0102 has no seed_url in the inventory"),
    (["dk-0102", "--base-url", "ftp://seeds"], "ftp://seeds"),
])
def test_bad_requests_exit_2_with_a_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str],
                                          message: str) -> None:
    make_mixed_inventory(tmp_path / "inv")
    monkeypatch.setenv("EDGEFLEET_HOME", str(tmp_path / "home"))
    code, out = _run("seed", "nocloud-url", *args, "-i", str(tmp_path / "inv"))
    assert code == 2 and message in " ".join(out.split()), out
