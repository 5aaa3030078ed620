"""The secret scanner of ``tests.hygiene`` finds what it is meant to find: a scan that cannot fail
proves nothing."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import yaml

from edgefleet.rollout.executor import load_seed_server_key
from edgefleet.rollout.ledger import Ledger
from edgefleet.secrets import generate_secrets, store_secrets
from edgefleet.seeds.server import SeedServer
from edgefleet.state.db import create_state_engine
from tests.hygiene import dump_state, find_secrets, run_secrets

NOW = datetime(2026, 11, 3, 21, 30, tzinfo=UTC)


def _home(tmp_path: Path) -> tuple[Path, dict[str, object]]:
    home = tmp_path / "home"
    home.mkdir()
    store_secrets(home, "dk-0001", generate_secrets(NOW))
    load_seed_server_key(home)
    return home, yaml.safe_load((home / "secrets" / "dk-0001.yaml").read_text())


def test_every_form_of_a_planted_secret_is_found(tmp_path: Path) -> None:
    home, data = _home(tmp_path)
    found = run_secrets(home, ["bmc-pw-0000"])
    certs = data["certs"]
    assert isinstance(certs, dict)
    os_key = certs["os"]["key"]
    pem_line = next(ln for ln in base64.b64decode(os_key).decode().splitlines() if not ln.startswith("-----"))
    token = data["trustdinfo"]["token"]  # type: ignore[index]
    key = (home / "seed-server.key").read_bytes()
    url = SeedServer(home, secret=key, public_url="http://127.0.0.1:1").url_for("seeds/x.iso", "n1", NOW)
    clean = {"log": "node dk-0001-n1 reimaged to v2; media ejected", "crt": certs["os"]["crt"],
             "url": "http://127.0.0.1:1/<token>/seeds/x.iso"}
    assert find_secrets(clean, found) == []
    planted = {"a": f"user admin password bmc-pw-0000 at {NOW}", "b": f"key: {os_key}\n", "c": f">{pem_line}<",
               "d": f"trustd token {token}", "e": f"hmac {key.hex()}".encode(), "f": f"GET {url} 200",
               "g": "-----BEGIN EC PRIVATE KEY-----\nMHcC...\n",
               "h": os_key[len(os_key) // 3 - 5:][:60]}  # a fragment cut from the middle
    hits = find_secrets(planted, found)
    assert "a: a BMC password" in hits
    assert "b: dk-0001.yaml: certs.os.key" in hits
    assert any(h.startswith("c: dk-0001.yaml: certs.os.key (PEM line") for h in hits)
    assert "d: dk-0001.yaml: trustdinfo.token" in hits
    assert "e: the seed server key (hex)" in hits
    assert "f: a seed URL token" in hits
    assert "g: a private key block" in hits
    assert "h: dk-0001.yaml: certs.os.key (middle of its base64)" in hits
    assert {h.split(":")[0] for h in hits} == set(planted)


def test_the_state_store_dump_holds_every_table(tmp_path: Path) -> None:
    home, data = _home(tmp_path)
    engine = create_state_engine(f"sqlite:///{home / 'edgefleet.db'}")
    try:
        dump = dump_state(engine)
        assert {"table events", "table rollouts", "table releases", "table store_runs"} <= set(dump)
        assert find_secrets(dump, run_secrets(home)) == []
        Ledger(engine).event(NOW, "oops", reason=f"cluster secret {data['cluster']['secret']}")  # type: ignore[index]
        assert find_secrets(dump_state(engine), run_secrets(home)) == ["table events: dk-0001.yaml: cluster.secret"]
    finally:
        engine.dispose()
