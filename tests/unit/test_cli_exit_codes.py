"""Exit codes as documented: 0 ok, 1 an operation failed, 2 bad input. An unknown rollout id,
store, node or release is bad input for every command that takes one; so are usage errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.rollout.ledger import Ledger
from edgefleet.state.db import close_all, open_state
from tests.helpers import SAMPLE_INVENTORY, record_release
from tests.unit.test_release_fuzz import run_cli

INV = ["-i", str(SAMPLE_INVENTORY)]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home whose state store holds one release and no rollout."""
    h = tmp_path_factory.mktemp("home")
    record_release(h, "v1")
    Ledger(open_state(f"sqlite:///{h / 'edgefleet.db'}"))
    close_all()
    return h


@pytest.mark.parametrize(("args", "says"), [
    (["rollout", "status", "ro-nope"], "no rollout 'ro-nope'"),
    (["rollout", "resume", "ro-nope", *INV], "no rollout 'ro-nope'"),
    (["rollout", "abort", "ro-nope"], "no rollout 'ro-nope'"),
    (["report", "ro-nope", "--out", "{home}/r.html"], "no rollout 'ro-nope'"),
    (["rollout", "start", "--release", "v9", *INV], "unknown release 'v9'"),
    (["rollout", "plan", "--release", "v1", "--canary-stores", "zz-999", *INV], "zz-999"),
    (["rollback", "--release", "v9", *INV], "unknown release 'v9'"),
    (["provision", "zz-999", "--release", "v1", *INV], "no group or store 'zz-999'"),
    (["seed", "build", "--release", "v9", "--store", "dk-001", "--out", "{home}/s", *INV], "unknown release 'v9'"),
    (["seed", "build", "--release", "v1", "--store", "zz-999", "--out", "{home}/s", *INV],
     "no group or store 'zz-999'"),
    (["seed", "nocloud-url", "zz-999", *INV], "zz-999"),
    (["release", "show", "v9"], "unknown release 'v9'"),
    (["release", "promote", "v9", "--to", "canary"], "unknown release 'v9'"),
    (["talosconfig", "zz-999", "--out", "{home}/t", *INV], "zz-999"),
    (["kubeconfig", "zz-999", "--out", "{home}/k", *INV], "zz-999"),
    (["inventory", "show", "zz-999", *INV], "zz-999"),
    (["rollout", "status", "--no-such-option"], "No such option"),
    (["rollout", "frobnicate"], "No such command"),
])
def test_unknown_names_and_usage_errors_exit_2(home: Path, args: list[str], says: str) -> None:
    code, text = run_cli([a.replace("{home}", str(home)) for a in args], home)
    assert code == 2, text
    assert says in text and "Traceback" not in text, text
    assert not (home / "s").exists() and not (home / "t").exists() and not (home / "r.html").exists()
