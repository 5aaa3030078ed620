"""``edgefleet seed build`` / ``seed inspect`` end to end: the real CLI in a subprocess, real files,
cloud-init's own NoCloud reader and network renderers on the seeds it writes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefleet.inventory.load import load_fleet
from edgefleet.releases.catalog import ReleaseCatalog
from edgefleet.seeds.render import render_network_config
from edgefleet.state.db import open_state
from tests.helpers import record_release

RELEASE = "talos-v1.12.6-r1"
# Runs the edgefleet CLI; registers the ``seed`` sub-app if edgefleet.cli does not (yet).
CLI = ("import edgefleet.cli as c\n"
       "from edgefleet.cli import seed\n"
       "if not any(g.name == 'seed' for g in c.app.registered_groups):\n"
       "    c.app.add_typer(seed.app, name='seed')\n"
       "c.main()\n")


def run(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CLI, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    e["EDGEFLEET_HOME"] = str(tmp_path / "home")
    e["COLUMNS"] = "200"
    record_release(tmp_path / "home", RELEASE)
    return e


def _edit_store(inventory: Path, store_id: str, **changes: Any) -> None:
    for f in (inventory / "stores").glob("*.yml"):
        data = yaml.safe_load(f.read_text())
        for s in data["stores"]:
            if s["id"] == store_id:
                for k, v in changes.items():
                    if k == "network":
                        s.setdefault("network", {}).update(v)
                    else:
                        s[k] = v(s) if callable(v) else v
                f.write_text(yaml.safe_dump(data, sort_keys=False))
                return
    raise AssertionError(f"no store {store_id}")


def _build(inv: Path, out: Path, env: dict[str, str], *extra: str) -> tuple[int, dict[str, Any], str]:
    p = run("seed", "build", "-i", str(inv), "--release", RELEASE, "--out", str(out), "--json", *extra,
            env=env, cwd=inv.parent)
    return p.returncode, (json.loads(p.stdout) if p.returncode == 0 else {}), p.stderr


@pytest.mark.slow
def test_build_inspect_rebuild_and_cloud_init_reads_the_seeds(sample_copy: Path, tmp_path: Path,
                                                              env: dict[str, str], cloudinit: Any) -> None:
    out = tmp_path / "seeds"
    stores = ["de-001", "no-003", "us-001"]  # VLAN, a bonded node, dual stack
    rc, rep, err = _build(sample_copy, out, env, *[a for s in stores for a in ("--store", s)])
    assert rc == 0, err
    assert rep["nodes"] == 9 and len(rep["written"]) == 9 and rep["skipped"] == 0
    assert sorted(rep["secrets_generated"]) == stores
    assert rep["talos_version"] == "v1.12.6" and rep["kubernetes_version"] == "1.35.0"
    assert rep["installer_image"] == "ghcr.io/siderolabs/installer:v1.12.6"
    isos = sorted(out.glob("*/*.iso"))
    assert len(isos) == 9
    for iso in isos:
        assert stat.S_IMODE(iso.stat().st_mode) == 0o600
    for s in stores:
        assert stat.S_IMODE((tmp_path / "home" / "secrets" / f"{s}.yaml").stat().st_mode) == 0o600
    index = json.loads((out / "index.json").read_text())["nodes"]
    assert len(index) == 9

    # Unchanged inventory: nothing rendered, nothing touched.
    mtimes = {p: p.stat().st_mtime_ns for p in isos}
    rc, rep, err = _build(sample_copy, out, env, *[a for s in stores for a in ("--store", s)])
    assert rc == 0, err
    assert rep["skipped"] == 9 and rep["written"] == [] and rep["secrets_generated"] == []
    assert {p: p.stat().st_mtime_ns for p in isos} == mtimes

    # inspect shows what the library renders.
    fleet = load_fleet(sample_copy)
    iso = out / "no-003" / "no-003-n1.iso"
    p = run("seed", "inspect", str(iso), "--json", env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    seen = json.loads(p.stdout)
    assert seen["label"] == "CIDATA" and seen["sha256"] == index["no-003/no-003-n1"]["sha256"]
    store, node = fleet.store("no-003"), fleet.store("no-003").nodes[0]
    assert node.bond is not None
    assert seen["files"]["network-config"] == render_network_config(store, node).decode()
    meta = yaml.safe_load(seen["files"]["meta-data"])
    assert meta["local-hostname"] == "no-003-n1"
    docs = list(yaml.safe_load_all(seen["files"]["user-data"]))
    assert docs[0]["machine"]["nodeLabels"]["edgefleet.io/release"] == RELEASE
    assert {"kind": "HostnameConfig", "hostname": "no-003-n1"}.items() <= docs[1].items()
    p = run("seed", "inspect", str(iso), env=env, cwd=tmp_path)
    assert p.returncode == 0 and "label CIDATA" in p.stdout and "--- network-config" in p.stdout

    # cloud-init's NoCloud datasource reads the seed back unchanged.
    got = cloudinit.read_nocloud(iso, tmp_path / "ci")
    assert got["found"], "\n".join(got["log"])
    assert got["userdata_raw"] == seen["files"]["user-data"].encode()
    assert got["metadata"]["instance-id"] == meta["instance-id"]
    assert got["network_config"] == yaml.safe_load(seen["files"]["network-config"])

    # cloud-init's renderers accept every network-config (VLAN, bond, dual stack).
    for s in stores:
        for n in fleet.store(s).nodes:
            nc = tmp_path / "nc" / f"{n.name}.yaml"
            nc.parent.mkdir(exist_ok=True)
            nc.write_bytes(render_network_config(fleet.store(s), n))
            conv = cloudinit.net_convert(nc, tmp_path / "nc" / n.name, distro="debian", output="networkd")
            assert conv.returncode == 0, conv.stderr
            rendered = "".join(f.read_text() for f in (tmp_path / "nc" / n.name).rglob("*.network"))
            assert f"Address={n.ip}/24" in rendered
            assert "Destination=0.0.0.0/0" in rendered
            ipv6 = fleet.store(s).network.ipv6
            if n.ipv6 is not None and ipv6 is not None:
                assert f"Address={n.ipv6}/64" in rendered and f"Gateway={ipv6.gateway}" in rendered
                assert "Destination=::/64" not in rendered

    # A change in one store re-renders exactly that store's nodes, with a new instance-id.
    _edit_store(sample_copy, "de-001", network={"dns": ["10.0.9.53"]})
    rc, rep, err = _build(sample_copy, out, env, *[a for s in stores for a in ("--store", s)])
    assert rc == 0, err
    assert sorted(rep["written"]) == [f"de-001/de-001-n{i}" for i in (1, 2, 3)] and rep["skipped"] == 6
    p = run("seed", "inspect", str(out / "de-001" / "de-001-n1.iso"), "--json", env=env, cwd=tmp_path)
    assert "10.0.9.53" in json.loads(p.stdout)["files"]["network-config"]


def test_one_node_from_all_stores(sample_copy: Path, tmp_path: Path, env: dict[str, str]) -> None:
    out = tmp_path / "seeds"
    rc, rep, err = _build(sample_copy, out, env, "--all", "--node", "vn-001-n1")
    assert rc == 0, err
    assert rep["nodes"] == 1 and rep["written"] == ["vn-001/vn-001-n1"] and rep["secrets_generated"] == ["vn-001"]
    assert [p.relative_to(out).as_posix() for p in out.rglob("*.iso")] == ["vn-001/vn-001-n1.iso"]


def test_a_patch_that_breaks_the_schema_writes_nothing(sample_copy: Path, tmp_path: Path,
                                                       env: dict[str, str]) -> None:
    def bad_node(s: dict[str, Any]) -> list[dict[str, Any]]:
        s["nodes"][1]["talos_patches"] = [{"machine": {"install": {"wipe": "maybe"}}}]
        return list(s["nodes"])

    _edit_store(sample_copy, "dk-001", nodes=bad_node)
    out = tmp_path / "seeds"
    rc, _, err = _build(sample_copy, out, env, "--store", "dk-003", "--store", "dk-001")
    assert rc == 2
    assert "store dk-001 node dk-001-n2" in err and "machine.install.wipe" in err
    assert not out.exists(), "bad input must leave nothing behind"
    assert not (tmp_path / "home" / "secrets").exists(), "no secrets may be written for a failed build"


def test_secrets_missing_for_a_store_with_seeds(sample_copy: Path, tmp_path: Path, env: dict[str, str]) -> None:
    out = tmp_path / "seeds"
    rc, _, err = _build(sample_copy, out, env, "--store", "dk-003")
    assert rc == 0, err
    iso = out / "dk-003" / "dk-003-n1.iso"
    before = iso.read_bytes()
    (tmp_path / "home" / "secrets" / "dk-003.yaml").unlink()
    rc, _, err = _build(sample_copy, out, env, "--store", "dk-003")
    assert rc == 2
    assert "store dk-003" in err and "secrets file" in err and "missing" in err
    assert iso.read_bytes() == before
    assert not (tmp_path / "home" / "secrets" / "dk-003.yaml").exists()


@pytest.mark.parametrize(("args", "message"), [
    (("--store", "zz-999"), "no group or store 'zz-999'"),
    ((), "give the stores: --limit PATTERN"),
    (("--store", "dk-003", "--all"), "give one store selector, not --store and --all"),
    (("--store", "dk-003", "--node", "dk-001-n1"), "no node 'dk-001-n1' in store dk-003"),
])
def test_bad_arguments_exit_2_and_write_nothing(sample_copy: Path, tmp_path: Path, env: dict[str, str],
                                                args: tuple[str, ...], message: str) -> None:
    out = tmp_path / "seeds"
    rc, _, err = _build(sample_copy, out, env, *args)
    assert rc == 2 and message in err, err
    assert not out.exists() and not (tmp_path / "home" / "secrets").exists()


def test_the_release_comes_from_the_catalog(sample_copy: Path, tmp_path: Path, env: dict[str, str]) -> None:
    """Versions and installer image are the catalog's; a release never built, or revoked, is refused."""
    home = tmp_path / "home"
    record_release(home, "spring", talos_version="v1.12.5", kubernetes_version="1.34.2",
                   installer_image="registry.example/installer:spring")
    p = run("seed", "build", "-i", str(sample_copy), "--release", "spring", "--out", str(tmp_path / "o"),
            "--store", "dk-003", "--json", env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert (rep["talos_version"], rep["kubernetes_version"], rep["installer_image"]) == (
        "v1.12.5", "1.34.2", "registry.example/installer:spring")
    user_data = run("seed", "inspect", str(tmp_path / "o" / "dk-003" / "dk-003-n1.iso"), "--json", env=env,
                    cwd=tmp_path)
    assert "registry.example/installer:spring" in json.loads(user_data.stdout)["files"]["user-data"]

    # A name that looks like a version but was never built.
    p = run("seed", "build", "-i", str(sample_copy), "--release", "talos-v1.12.6-r9", "--out", str(tmp_path / "x"),
            "--store", "dk-001", env=env, cwd=tmp_path)
    assert p.returncode == 2 and "unknown release 'talos-v1.12.6-r9'" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "x").exists()
    assert not (home / "secrets" / "dk-001.yaml").exists()

    # Revoked: final.
    ReleaseCatalog(open_state(f"sqlite:///{home / 'edgefleet.db'}")).revoke(
        "spring", now=datetime.now(UTC), reason="bad kernel")
    p = run("seed", "build", "-i", str(sample_copy), "--release", "spring", "--out", str(tmp_path / "x"),
            "--store", "dk-001", env=env, cwd=tmp_path)
    assert p.returncode == 2 and "revoked" in p.stderr and not (tmp_path / "x").exists(), p.stderr

    # No state store at all: refused, and no empty one created.
    fresh = {**env, "EDGEFLEET_HOME": str(tmp_path / "fresh")}
    p = run("seed", "build", "-i", str(sample_copy), "--release", RELEASE, "--out", str(tmp_path / "x"),
            "--store", "dk-001", env=fresh, cwd=tmp_path)
    assert p.returncode == 2 and "no release catalog" in p.stderr and "edgefleet release build" in p.stderr
    assert not (tmp_path / "fresh").exists() and not (tmp_path / "x").exists()


def test_inspect_rejects_a_file_that_is_not_a_seed(tmp_path: Path, env: dict[str, str]) -> None:
    junk = tmp_path / "junk.iso"
    junk.write_bytes(b"\0" * 40000)
    p = run("seed", "inspect", str(junk), env=env, cwd=tmp_path)
    assert p.returncode == 2 and "not an ISO9660 image" in p.stderr
