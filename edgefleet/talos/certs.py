"""Client certificates for a store's Talos API and Kubernetes API, minted from its cluster secrets.

Pure apart from the operating system's random source (``now`` is a parameter):

* ``mint_os_client_cert``: a Talos API client certificate signed by the store's OS CA (Ed25519),
  its role in the subject organization (``os:reader``, ``os:operator``, ``os:admin``), as
  ``talosctl config new --roles`` makes them. The client KEY is ECDSA P-256, not Ed25519 as
  talosctl's: gRPC's TLS stack (BoringSSL in grpcio 1.85) fails the handshake with
  NO_COMMON_SIGNATURE_ALGORITHMS when either peer's key is Ed25519, while it verifies certificates
  signed by an Ed25519 CA fine. Talos's apid (Go crypto/tls) accepts ECDSA client keys.
* ``mint_kube_client_cert``: a Kubernetes client certificate signed by the store's Kubernetes CA
  (ECDSA P-256). ``admin=True`` puts it in group ``system:masters``; otherwise in
  ``READER_GROUP``, which grants nothing until the cluster binds that group (e.g. a
  ClusterRoleBinding to the ``view`` ClusterRole).
* ``mint_ca`` / ``mint_server_cert``: a throwaway CA and a server certificate (the simulator's
  Talos API endpoint).
* ``cert_roles`` / ``issued_by``: what the Talos API server side checks on a client certificate.

PEM keys are standard PKCS#8 (``PRIVATE KEY``), which gRPC, talosctl and kubectl all read.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from ipaddress import ip_address

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.errors import SecretsError
from edgefleet.secrets import ClusterSecrets, KeyAndCert

__all__ = [
    "READER_GROUP",
    "CaKey",
    "IssuedClientCert",
    "TalosRole",
    "cert_roles",
    "issued_by",
    "load_ca",
    "mint_ca",
    "mint_kube_client_cert",
    "mint_os_client_cert",
    "mint_server_cert",
]

READER_GROUP = "edgefleet:readers"
CLIENT_VALIDITY = timedelta(hours=24)
_BACKDATE = timedelta(minutes=5)  # tolerate a node clock a little behind ours

CaKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


class TalosRole(StrEnum):
    """Talos API roles (the organization of a client certificate)."""

    reader = "os:reader"
    operator = "os:operator"
    admin = "os:admin"


@dataclass(frozen=True, slots=True)
class IssuedClientCert:
    """A client certificate and its key (PEM), with the CA PEM that verifies the server side."""

    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes


def _key_pem(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_ca(kc: KeyAndCert, *, store_id: str, which: str) -> tuple[x509.Certificate, CaKey]:
    """A CA from a secrets bundle entry (base64 of PEM; Talos's ``ED25519 PRIVATE KEY`` label accepted)."""
    try:
        crt_pem = base64.b64decode(kc.crt, validate=True)
        key_pem = base64.b64decode(kc.key, validate=True)
        key_pem = key_pem.replace(b"ED25519 PRIVATE KEY", b"PRIVATE KEY")
        cert = x509.load_pem_x509_certificate(crt_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError as e:
        raise SecretsError(f"store {store_id}: certs.{which} in its secrets is not a base64 PEM certificate and "
                           f"key ({e}); restore the secrets file from a backup") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise SecretsError(f"store {store_id}: certs.{which} key is a {type(key).__name__}; expected Ed25519 or "
                           "ECDSA as talosctl generates")
    return cert, key


def _sign(builder: x509.CertificateBuilder, key: CaKey) -> x509.Certificate:
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


def _leaf(subject: x509.Name, public_key: ec.EllipticCurvePublicKey, ca_cert: x509.Certificate, now: datetime,
          validity: timedelta, usage: list[x509.ObjectIdentifier]) -> x509.CertificateBuilder:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    ca_public = ca_cert.public_key()
    if not isinstance(ca_public, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise ValueError("the CA key must be Ed25519 or ECDSA")
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False)
    )


def mint_os_client_cert(secrets: ClusterSecrets, role: TalosRole, *, now: datetime, store_id: str = "",
                        validity: timedelta = CLIENT_VALIDITY) -> IssuedClientCert:
    """A Talos API client certificate with ``role``, signed by the store's OS CA."""
    ca_cert, ca_key = load_ca(secrets.certs.os, store_id=store_id, which="os")
    key = ec.generate_private_key(ec.SECP256R1())  # not Ed25519: see the module docstring
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, role.value)])
    cert = _sign(_leaf(subject, key.public_key(), ca_cert, now, validity, [ExtendedKeyUsageOID.CLIENT_AUTH]), ca_key)
    return IssuedClientCert(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key),
                      ca_cert.public_bytes(serialization.Encoding.PEM))


def mint_kube_client_cert(secrets: ClusterSecrets, *, admin: bool, now: datetime, user: str, store_id: str = "",
                          validity: timedelta = CLIENT_VALIDITY) -> IssuedClientCert:
    """A Kubernetes client certificate (CN = ``user``), signed by the store's Kubernetes CA."""
    ca_cert, ca_key = load_ca(secrets.certs.k8s, store_id=store_id, which="k8s")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters" if admin else READER_GROUP),
        x509.NameAttribute(NameOID.COMMON_NAME, user),
    ])
    cert = _sign(_leaf(subject, key.public_key(), ca_cert, now, validity, [ExtendedKeyUsageOID.CLIENT_AUTH]), ca_key)
    return IssuedClientCert(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key),
                      ca_cert.public_bytes(serialization.Encoding.PEM))


def mint_ca(name: str, *, now: datetime, validity: timedelta = timedelta(days=365)) -> tuple[bytes, bytes]:
    """A fresh self-signed Ed25519 CA: (cert PEM, key PEM)."""
    key = ed25519.Ed25519PrivateKey.generate()
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, name)])
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - _BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    return _sign(builder, key).public_bytes(serialization.Encoding.PEM), _key_pem(key)


def mint_server_cert(ca_cert_pem: bytes, ca_key_pem: bytes, hosts: list[str], *, now: datetime,
                     validity: timedelta = timedelta(days=365)) -> tuple[bytes, bytes]:
    """A server certificate for ``hosts`` (IP addresses or DNS names): (cert PEM, key PEM)."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key must be Ed25519 or ECDSA")
    key = ec.generate_private_key(ec.SECP256R1())  # not Ed25519: see the module docstring
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "server")])
    builder = _leaf(subject, key.public_key(), ca_cert, now, validity, [ExtendedKeyUsageOID.SERVER_AUTH])
    builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return _sign(builder, ca_key).public_bytes(serialization.Encoding.PEM), _key_pem(key)


def cert_roles(cert: x509.Certificate) -> frozenset[str]:
    """The organizations of a certificate's subject (Talos reads roles from there)."""
    return frozenset(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` signed ``cert`` (issuer name and signature; validity dates are the TLS layer's job)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
