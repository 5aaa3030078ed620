"""talosconfig and kubeconfig: their shape, and the CLI commands that write them."""

from __future__ import annotations

import base64
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from cryptography import x509

from edgefleet.cli.talos import kubeconfig_cmd, talosconfig_cmd
from edgefleet.errors import EdgefleetError
from edgefleet.inventory.load import load_fleet
from edgefleet.inventory.model import url_host
from edgefleet.rollout.endpoints import Endpoints
from edgefleet.secrets import ClusterSecrets, generate_secrets, store_secrets
from edgefleet.talos.api import endpoint_with_port
from edgefleet.talos.certs import TalosRole, cert_roles, issued_by, mint_kube_client_cert, mint_os_client_cert
from edgefleet.talos.clientconfig import render_kubeconfig, render_talosconfig
from tests.helpers import SAMPLE_INVENTORY

pytestmark = pytest.mark.clock  # certificates, tokens or TLS meet the real clock: run again under faketime

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
STORE = "dk-001"


@pytest.fixture(scope="module")
def bundle() -> ClusterSecrets:
    return generate_secrets(NOW)


def _pem(b64: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(base64.b64decode(b64))


def test_talosconfig_shape(bundle: ClusterSecrets) -> None:
    store = load_fleet(SAMPLE_INVENTORY).store(STORE)
    doc = yaml.safe_load(render_talosconfig(store, mint_os_client_cert(bundle, TalosRole.reader, now=NOW)))
    assert doc["context"] == STORE and list(doc["contexts"]) == [STORE]
    ctx = doc["contexts"][STORE]
    assert set(ctx) == {"endpoints", "nodes", "ca", "crt", "key"}
    assert ctx["endpoints"] == [str(n.ip) for n in store.control_planes]
    assert str(store.cluster.vip) not in ctx["endpoints"]
    assert ctx["nodes"] == ctx["endpoints"][:1]
    assert issued_by(_pem(ctx["crt"]), _pem(ctx["ca"])) and cert_roles(_pem(ctx["crt"])) == {"os:reader"}
    assert base64.b64decode(ctx["key"]).startswith(b"-----BEGIN PRIVATE KEY-----")


def test_kubeconfig_shape(bundle: ClusterSecrets) -> None:
    store = load_fleet(SAMPLE_INVENTORY).store(STORE)
    doc = yaml.safe_load(render_kubeconfig(store, mint_kube_client_cert(bundle, admin=False, now=NOW, user="ops"),
                                           user="ops"))
    assert doc["kind"] == "Config" and doc["current-context"] == f"ops@{STORE}"
    cluster = doc["clusters"][0]["cluster"]
    assert cluster["server"] == store.endpoint == "https://10.20.1.10:6443"
    assert _pem(cluster["certificate-authority-data"]) == _pem(bundle.certs.k8s.crt)
    user = doc["users"][0]["user"]
    assert issued_by(_pem(user["client-certificate-data"]), _pem(bundle.certs.k8s.crt))
    assert doc["contexts"][0]["context"] == {"cluster": STORE, "user": f"ops@{STORE}"}


# --- the CLI commands ------------------------------------------------------------------------------

app = typer.Typer()
app.command("talosconfig")(talosconfig_cmd)
app.command("kubeconfig")(kubeconfig_cmd)


def invoke(*args: str) -> int:
    """Run a command as ``edgefleet.cli.main`` does: EdgefleetError -> its exit code."""
    try:
        app([*args, "--inventory", str(SAMPLE_INVENTORY)], standalone_mode=False)
    except EdgefleetError as e:
        return e.exit_code
    except Exception as e:  # click usage errors carry their own exit code
        code: Any = getattr(e, "exit_code", None)
        if isinstance(code, int):
            return code
        raise
    return 0


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bundle: ClusterSecrets) -> Path:
    h = tmp_path / "home"
    store_secrets(h, STORE, bundle)
    monkeypatch.setenv("EDGEFLEET_HOME", str(h))
    monkeypatch.chdir(tmp_path)
    return h


def test_ipv6_only_store_configs_and_endpoints(bundle: ClusterSecrets) -> None:
    """vn-002 is IPv6-only: URLs bracket the address, talosctl endpoints are bare addresses (it adds
    the port itself), a gRPC target gets brackets and apid's port."""
    store = load_fleet(SAMPLE_INVENTORY).store("vn-002")
    kube = yaml.safe_load(render_kubeconfig(store, mint_kube_client_cert(bundle, admin=True, now=NOW, user="admin"),
                                            user="admin"))
    assert kube["clusters"][0]["cluster"]["server"] == store.endpoint == "https://[fd00:27:2::10]:6443"
    talos = yaml.safe_load(render_talosconfig(store, mint_os_client_cert(bundle, TalosRole.reader, now=NOW)))
    assert talos["contexts"]["vn-002"]["endpoints"] == ["fd00:27:2::11", "fd00:27:2::12", "fd00:27:2::13"]
    assert endpoint_with_port("fd00:27:2::11") == "[fd00:27:2::11]:50000"
    assert endpoint_with_port("[fd00:27:2::11]:50001") == "[fd00:27:2::11]:50001"
    assert endpoint_with_port("10.20.1.11") == "10.20.1.11:50000"
    assert endpoint_with_port("127.0.0.1:4321") == "127.0.0.1:4321"
    assert endpoint_with_port("cp.example") == "cp.example:50000"
    assert url_host("fd00::1") == "[fd00::1]" and url_host("10.0.0.1") == "10.0.0.1" and url_host("x") == "x"
    # the production health probes' Kubernetes API URL
    assert Endpoints().k8s(store) == "https://[fd00:27:2::10]:6443"


def test_talosconfig_command_writes_0600_and_refuses_to_overwrite(home: Path, tmp_path: Path,
                                                                  bundle: ClusterSecrets) -> None:
    assert invoke("talosconfig", STORE) == 0
    f = tmp_path / f"{STORE}.talosconfig"
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    ctx = yaml.safe_load(f.read_bytes())["contexts"][STORE]
    assert cert_roles(_pem(ctx["crt"])) == {"os:reader"}  # reader unless asked
    before = f.read_bytes()
    assert invoke("talosconfig", STORE, "--role", "os:admin") == 2
    assert f.read_bytes() == before
    assert invoke("talosconfig", STORE, "--role", "os:admin", "--force") == 0
    ctx = yaml.safe_load(f.read_bytes())["contexts"][STORE]
    assert cert_roles(_pem(ctx["crt"])) == {"os:admin"} and stat.S_IMODE(f.stat().st_mode) == 0o600
    assert invoke("talosconfig", STORE, "--role", "root") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{STORE}.talosconfig", "home"]


def test_kubeconfig_command(home: Path, tmp_path: Path, bundle: ClusterSecrets) -> None:
    out = tmp_path / "k" / "cfg"
    out.parent.mkdir()
    assert invoke("kubeconfig", STORE, "--out", str(out)) == 0
    doc = yaml.safe_load(out.read_bytes())
    crt = _pem(doc["users"][0]["user"]["client-certificate-data"])
    assert cert_roles(crt) == {"edgefleet:readers"} and stat.S_IMODE(out.stat().st_mode) == 0o600
    assert invoke("kubeconfig", STORE, "--out", str(out), "--admin", "--force") == 0
    crt = _pem(yaml.safe_load(out.read_bytes())["users"][0]["user"]["client-certificate-data"])
    assert cert_roles(crt) == {"system:masters"}
    assert [p.name for p in out.parent.iterdir()] == ["cfg"]  # no temporary files left


def test_bad_input_exits_2_and_writes_nothing(home: Path, tmp_path: Path) -> None:
    assert invoke("talosconfig", "no-such-store") == 2
    assert invoke("kubeconfig", "dk-002") == 2  # a store without secrets
    assert invoke("talosconfig", "dk-002", "--out", str(tmp_path / "x")) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]
