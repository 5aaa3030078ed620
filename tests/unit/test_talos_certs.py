"""Client certificates minted from a store's secrets: issuer, role, key type, validity, errors."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.errors import SecretsError
from edgefleet.secrets import ClusterSecrets, KeyAndCert, generate_secrets
from edgefleet.talos.certs import (
    READER_GROUP,
    TalosRole,
    cert_roles,
    issued_by,
    load_ca,
    mint_ca,
    mint_kube_client_cert,
    mint_os_client_cert,
    mint_server_cert,
)

pytestmark = pytest.mark.clock  # certificates, tokens or TLS meet the real clock: run again under faketime

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def bundle() -> ClusterSecrets:
    return generate_secrets(NOW)


@pytest.fixture(scope="module")
def other() -> ClusterSecrets:
    return generate_secrets(NOW)


def _ca(kc: KeyAndCert) -> x509.Certificate:
    return x509.load_pem_x509_certificate(base64.b64decode(kc.crt))


@pytest.mark.parametrize("role", list(TalosRole))
def test_os_client_cert_carries_the_role_and_chains_to_the_os_ca(bundle: ClusterSecrets, other: ClusterSecrets,
                                                                  role: TalosRole) -> None:
    c = mint_os_client_cert(bundle, role, now=NOW, store_id="s1")
    cert = x509.load_pem_x509_certificate(c.cert_pem)
    assert cert_roles(cert) == {role.value}
    assert issued_by(cert, _ca(bundle.certs.os))
    assert not issued_by(cert, _ca(other.certs.os))  # same issuer name "talos", another key
    assert not issued_by(cert, _ca(bundle.certs.k8s))
    assert c.ca_pem == base64.b64decode(bundle.certs.os.crt)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    # ECDSA, not Ed25519: grpc's TLS cannot sign handshakes with Ed25519 keys (see certs.py)
    key = serialization.load_pem_private_key(c.key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and b"BEGIN PRIVATE KEY" in c.key_pem
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    ski = _ca(bundle.certs.os).extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert aki == ski


def test_validity_window(bundle: ClusterSecrets) -> None:
    c = mint_os_client_cert(bundle, TalosRole.reader, now=NOW, validity=timedelta(hours=2))
    cert = x509.load_pem_x509_certificate(c.cert_pem)
    assert cert.not_valid_before_utc == NOW - timedelta(minutes=5)
    assert cert.not_valid_after_utc == NOW + timedelta(hours=2)
    with pytest.raises(ValueError, match="timezone"):
        mint_os_client_cert(bundle, TalosRole.reader, now=NOW.replace(tzinfo=None))


@pytest.mark.parametrize(("admin", "group"), [(True, "system:masters"), (False, READER_GROUP)])
def test_kube_client_cert(bundle: ClusterSecrets, admin: bool, group: str) -> None:
    c = mint_kube_client_cert(bundle, admin=admin, now=NOW, user="alice", store_id="s1")
    cert = x509.load_pem_x509_certificate(c.cert_pem)
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == [group]
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == ["alice"]
    assert issued_by(cert, _ca(bundle.certs.k8s)) and not issued_by(cert, _ca(bundle.certs.os))


def test_talos_ed25519_key_label_is_read(bundle: ClusterSecrets) -> None:
    assert b"ED25519 PRIVATE KEY" in base64.b64decode(bundle.certs.os.key)
    cert, key = load_ca(bundle.certs.os, store_id="s1", which="os")
    assert cert.subject == _ca(bundle.certs.os).subject and key is not None


def test_damaged_ca_is_a_secrets_error(bundle: ClusterSecrets) -> None:
    bad = bundle.model_copy(update={"certs": bundle.certs.model_copy(update={"os": KeyAndCert(crt="bm90IGEgcGVt",
                                                                                               key="eA==")})})
    with pytest.raises(SecretsError, match=r"store s9: certs\.os"):
        mint_os_client_cert(bad, TalosRole.admin, now=NOW, store_id="s9")


def test_server_cert_sans() -> None:
    ca, key = mint_ca("sim", now=NOW)
    crt, _ = mint_server_cert(ca, key, ["127.0.0.1", "localhost"], now=NOW)
    cert = x509.load_pem_x509_certificate(crt)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert issued_by(cert, x509.load_pem_x509_certificate(ca))
