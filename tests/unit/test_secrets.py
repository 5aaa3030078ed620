"""Cluster secrets: the ``talosctl gen secrets`` shape, the key types, generate-once, 0600, encryption."""

from __future__ import annotations

import base64
import re
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from edgefleet.errors import SecretsError
from edgefleet.secrets import (
    SECRETS_KEY_ENV,
    ClusterSecrets,
    ensure_secrets,
    generate_secrets,
    load_secrets,
    render_secrets,
    secrets_path,
    store_secrets,
)

pytestmark = pytest.mark.clock  # certificates, tokens or TLS meet the real clock: run again under faketime

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
TOKEN = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")


@pytest.fixture(scope="module")
def bundle() -> ClusterSecrets:
    return generate_secrets(NOW)


@pytest.fixture(autouse=True)
def _no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRETS_KEY_ENV, raising=False)


def _pem(b64: str) -> bytes:
    return base64.b64decode(b64, validate=True)


def test_yaml_has_exactly_the_talosctl_gen_secrets_shape(bundle: ClusterSecrets) -> None:
    doc = yaml.safe_load(render_secrets(bundle))
    assert list(doc) == ["cluster", "secrets", "trustdinfo", "certs"]
    assert set(doc["cluster"]) == {"id", "secret"}
    assert set(doc["secrets"]) == {"bootstraptoken", "secretboxencryptionsecret"}
    assert set(doc["trustdinfo"]) == {"token"}
    assert set(doc["certs"]) == {"etcd", "k8s", "k8saggregator", "k8sserviceaccount", "os"}
    for ca in ("etcd", "k8s", "k8saggregator", "os"):
        assert set(doc["certs"][ca]) == {"crt", "key"}
    assert set(doc["certs"]["k8sserviceaccount"]) == {"key"}
    for v in (doc["cluster"]["id"], doc["cluster"]["secret"], doc["secrets"]["secretboxencryptionsecret"]):
        assert len(base64.b64decode(v, validate=True)) == 32
    assert TOKEN.match(doc["secrets"]["bootstraptoken"])
    assert TOKEN.match(doc["trustdinfo"]["token"])
    assert ClusterSecrets.model_validate(doc) == bundle


@pytest.mark.parametrize("name", ["etcd", "k8s", "k8saggregator"])
def test_kubernetes_and_etcd_cas_are_ecdsa_p256_valid_ten_years(bundle: ClusterSecrets, name: str) -> None:
    pair = getattr(bundle.certs, name)
    key_pem = _pem(pair.key)
    assert key_pem.startswith(b"-----BEGIN EC PRIVATE KEY-----")
    key = serialization.load_pem_private_key(key_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    cert = x509.load_pem_x509_certificate(_pem(pair.crt))
    assert cert.public_key() == key.public_key()
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert cert.not_valid_before_utc == NOW
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=3650)
    cert.verify_directly_issued_by(cert)


def test_os_ca_is_ed25519_with_talos_pem_label(bundle: ClusterSecrets) -> None:
    key_pem = _pem(bundle.certs.os.key)
    assert key_pem.startswith(b"-----BEGIN ED25519 PRIVATE KEY-----\n")
    body = b"".join(key_pem.splitlines()[1:-1])
    key = serialization.load_der_private_key(base64.b64decode(body), None)  # PKCS#8 inside
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    cert = x509.load_pem_x509_certificate(_pem(bundle.certs.os.crt))
    assert cert.public_key() == key.public_key()
    assert cert.not_valid_after_utc - NOW == timedelta(days=3650)
    cert.verify_directly_issued_by(cert)


def test_service_account_key_is_rsa_4096_pkcs1(bundle: ClusterSecrets) -> None:
    pem = _pem(bundle.certs.k8sserviceaccount.key)
    assert pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    key = serialization.load_pem_private_key(pem, None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 4096


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        generate_secrets(datetime(2026, 1, 1))


def test_ensure_generates_once_persists_0600_and_reloads(tmp_path: Path) -> None:
    first = ensure_secrets(tmp_path, "dk-001", cluster_exists=False, now=NOW)
    path = secrets_path(tmp_path, "dk-001")
    assert path == tmp_path / "secrets" / "dk-001.yaml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["dk-001.yaml"]  # no temp file left behind
    before = path.read_bytes()
    # Second call (even claiming a fresh store) must load, never regenerate.
    assert ensure_secrets(tmp_path, "dk-001", cluster_exists=False, now=NOW) == first
    assert ensure_secrets(tmp_path, "dk-001", cluster_exists=True, now=NOW) == first
    assert path.read_bytes() == before
    assert load_secrets(tmp_path, "dk-001") == first


def test_missing_secrets_for_an_existing_cluster_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SecretsError, match=r"store dk-009: .*missing.*split the cluster") as e:
        ensure_secrets(tmp_path, "dk-009", cluster_exists=True, now=NOW)
    assert str(secrets_path(tmp_path, "dk-009")) in str(e.value)
    assert not (tmp_path / "secrets").exists()


def test_store_never_overwrites(tmp_path: Path, bundle: ClusterSecrets) -> None:
    store_secrets(tmp_path, "s1", bundle)
    before = secrets_path(tmp_path, "s1").read_bytes()
    with pytest.raises(FileExistsError):
        store_secrets(tmp_path, "s1", bundle)
    assert secrets_path(tmp_path, "s1").read_bytes() == before
    assert [p.name for p in (tmp_path / "secrets").iterdir()] == ["s1.yaml"]


def test_encrypted_at_rest_with_the_environment_key(tmp_path: Path, bundle: ClusterSecrets,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    key = Fernet.generate_key().decode()
    monkeypatch.setenv(SECRETS_KEY_ENV, key)
    store_secrets(tmp_path, "enc", bundle)
    raw = secrets_path(tmp_path, "enc").read_bytes()
    assert b"certs" not in raw and bundle.cluster.secret.encode() not in raw
    assert load_secrets(tmp_path, "enc") == bundle

    monkeypatch.delenv(SECRETS_KEY_ENV)
    with pytest.raises(SecretsError, match=rf"store enc: .*enc.yaml is encrypted; set {SECRETS_KEY_ENV}"):
        load_secrets(tmp_path, "enc")
    monkeypatch.setenv(SECRETS_KEY_ENV, Fernet.generate_key().decode())
    with pytest.raises(SecretsError, match=r"cannot be decrypted .*wrong key"):
        load_secrets(tmp_path, "enc")
    monkeypatch.setenv(SECRETS_KEY_ENV, "not-a-key")
    with pytest.raises(SecretsError, match="is not a Fernet key"):
        load_secrets(tmp_path, "enc")
    # An explicit key wins over the environment.
    assert load_secrets(tmp_path, "enc", key=key) == bundle


def test_plain_files_still_load_when_a_key_is_set(tmp_path: Path, bundle: ClusterSecrets,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    store_secrets(tmp_path, "plain", bundle)
    monkeypatch.setenv(SECRETS_KEY_ENV, Fernet.generate_key().decode())
    assert load_secrets(tmp_path, "plain") == bundle


@pytest.mark.parametrize(("content", "message"), [
    (b"cluster: [unclosed", "not valid YAML"),
    (b"cluster: {id: a, secret: b}\n", "not a cluster secrets bundle: secrets"),
    (b"- just a list\n", "not a cluster secrets bundle"),
])
def test_damaged_files_name_the_store_and_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = secrets_path(tmp_path, "bad")
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    with pytest.raises(SecretsError, match=message) as e:
        load_secrets(tmp_path, "bad")
    assert "store bad" in str(e.value) and str(path) in str(e.value)


def test_load_missing_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(SecretsError, match=r"store nope: no cluster secrets at .*nope\.yaml"):
        load_secrets(tmp_path, "nope")


def test_the_simulator_reads_bmc_passwords_by_the_engines_rules() -> None:
    """One resolver: an empty variable is refused by the simulator as by the engine (the simulator
    used to accept it, and its BMCs would then take an empty password the engine never sends)."""
    from edgefleet.errors import BmcError, InputError
    from edgefleet.inventory.load import load_fleet
    from edgefleet.redfish.connector import resolve_password
    from edgefleet.sim.passwords import resolve_passwords

    fleet = load_fleet(Path(__file__).resolve().parents[2] / "inventory")
    node = next(n for s in fleet.stores.values() for n in s.nodes if n.bmc is not None)
    assert node.bmc is not None
    ref = node.bmc.credentials
    assert ref.password_env is not None
    with pytest.raises(BmcError):
        resolve_password(node.name, ref, environ={ref.password_env: ""})
    with pytest.raises(InputError, match=ref.password_env):
        resolve_passwords(fleet, environ={ref.password_env: ""})
    assert set(resolve_passwords(fleet, environ={ref.password_env: "s3cret"}).values()) == {"s3cret"}
