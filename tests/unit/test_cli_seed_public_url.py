"""``--seed-public-url``: the flag the in-band error message names exists on every command that
builds engine settings, and a value that is not an http(s) URL with a host is refused as bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgefleet.cli import app
from edgefleet.errors import EdgefleetError
from tests.contract.rollout_world import make_inventory


def _run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, list(args))
    if isinstance(r.exception, EdgefleetError):
        return r.exception.exit_code, str(r.exception)
    return r.exit_code, r.output


@pytest.mark.parametrize("command", [["rollout", "start"], ["rollout", "resume"], ["rollback"], ["provision"]])
def test_the_flag_exists(command: list[str]) -> None:
    code, out = _run(*command, "--help")
    assert code == 0 and "--seed-public-url" in out, out


@pytest.mark.parametrize("url", ["seeds.example.net", "ftp://seeds.example.net", "https://", "http://a b/"])
def test_a_bad_url_is_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    make_inventory(tmp_path / "inv")
    monkeypatch.setenv("EDGEFLEET_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    code, out = _run("provision", "dk-0001", "--release", "v1", "-i", str(tmp_path / "inv"), "--seed-public-url", url)
    assert code == 2 and "--seed-public-url" in out and "http:// or https://" in out, out
