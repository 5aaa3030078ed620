"""Per-store Talos cluster secrets: generated once, kept forever.

A store's cluster is defined by its secrets (CAs, tokens, the cluster id). They are generated on
the store's first provision, with the exact shape ``talosctl gen secrets`` writes, and stored in
``<home>/secrets/<store>.yaml`` (mode 0600, written atomically, never overwritten). Losing them
while the cluster exists is an error, never a reason to generate new ones: new CAs would split the
cluster (nodes seeded later could not join the nodes seeded before).

Encryption at rest is optional: when ``EDGEFLEET_SECRETS_KEY`` holds a Fernet key (see
``cryptography.fernet.Fernet.generate_key``), files are written as Fernet tokens; such a file
cannot be read without that key.

Generation is pure apart from the operating system's random source (``now`` is a parameter);
``load_secrets`` / ``ensure_secrets`` / ``store_secrets`` do the file I/O.
"""

from __future__ import annotations

import base64
import os
import secrets as _random
import string
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import BaseModel, ConfigDict, ValidationError

from edgefleet.atomic import write_atomic
from edgefleet.errors import SecretsError, YamlError
from edgefleet.safeyaml import parse_yaml

__all__ = [
    "SECRETS_KEY_ENV",
    "Certs",
    "ClusterIdentity",
    "ClusterSecrets",
    "KeyAndCert",
    "KeyOnly",
    "TokenSecrets",
    "TrustdInfo",
    "decode_secrets",
    "encode_secrets",
    "ensure_secrets",
    "generate_secrets",
    "load_secrets",
    "parse_secrets",
    "render_secrets",
    "secrets_path",
    "store_secrets",
    "write_secrets_file",
]

SECRETS_KEY_ENV = "EDGEFLEET_SECRETS_KEY"
CA_VALIDITY = timedelta(hours=87600)  # 10 years, as talosctl
_TOKEN_ALPHABET = string.ascii_lowercase + string.digits
_FERNET_PREFIX = b"gAAAAA"  # every Fernet token starts with version byte 0x80 + timestamp


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KeyAndCert(_Model):
    """A CA: ``crt`` and ``key`` are base64 of PEM, as talosctl writes them."""

    crt: str
    key: str


class KeyOnly(_Model):
    key: str


class ClusterIdentity(_Model):
    id: str
    secret: str


class TokenSecrets(_Model):
    bootstraptoken: str
    secretboxencryptionsecret: str


class TrustdInfo(_Model):
    token: str


class Certs(_Model):
    etcd: KeyAndCert
    k8s: KeyAndCert
    k8saggregator: KeyAndCert
    k8sserviceaccount: KeyOnly
    os: KeyAndCert


class ClusterSecrets(_Model):
    """The secrets bundle of one store's cluster (``talosctl gen secrets`` YAML)."""

    cluster: ClusterIdentity
    secrets: TokenSecrets
    trustdinfo: TrustdInfo
    certs: Certs


# --- generation (pure but for randomness) ---------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _random_b64(n: int = 32) -> str:
    return _b64(_random.token_bytes(n))


def _token() -> str:
    """A kubeadm-style token ``[a-z0-9]{6}.[a-z0-9]{16}``, the format Talos uses for both tokens."""
    pick = _random.choice
    return "".join(pick(_TOKEN_ALPHABET) for _ in range(6)) + "." + "".join(
        pick(_TOKEN_ALPHABET) for _ in range(16))


_CaKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _ca(key: _CaKey, subject: x509.Name, now: datetime) -> bytes:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = builder.sign(key, algorithm)
    return cert.public_bytes(serialization.Encoding.PEM)


def _org(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, name)])


def _ecdsa_ca(subject: x509.Name, now: datetime) -> KeyAndCert:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())  # "EC PRIVATE KEY", as Go's MarshalECPrivateKey
    return KeyAndCert(crt=_b64(_ca(key, subject, now)), key=_b64(pem))


def _ed25519_ca(subject: x509.Name, now: datetime) -> KeyAndCert:
    key = ed25519.Ed25519PrivateKey.generate()
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    # Talos labels its Ed25519 keys "ED25519 PRIVATE KEY" around a PKCS#8 body.
    body = base64.encodebytes(der).decode("ascii")
    pem = f"-----BEGIN ED25519 PRIVATE KEY-----\n{body}-----END ED25519 PRIVATE KEY-----\n".encode("ascii")
    return KeyAndCert(crt=_b64(_ca(key, subject, now)), key=_b64(pem))


def generate_secrets(now: datetime) -> ClusterSecrets:
    """A fresh secrets bundle. ``now`` starts the CAs' validity (10 years). Costs about a second:
    the RSA-4096 service-account key dominates."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    sa = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    sa_pem = sa.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption())  # "RSA PRIVATE KEY" (PKCS#1)
    return ClusterSecrets(
        cluster=ClusterIdentity(id=_random_b64(), secret=_random_b64()),
        secrets=TokenSecrets(bootstraptoken=_token(), secretboxencryptionsecret=_random_b64()),
        trustdinfo=TrustdInfo(token=_token()),
        certs=Certs(
            etcd=_ecdsa_ca(_org("etcd"), now),
            k8s=_ecdsa_ca(_org("kubernetes"), now),
            k8saggregator=_ecdsa_ca(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "front-proxy")]), now),
            k8sserviceaccount=KeyOnly(key=_b64(sa_pem)),
            os=_ed25519_ca(_org("talos"), now),
        ),
    )


def render_secrets(s: ClusterSecrets) -> bytes:
    """The bundle as ``talosctl gen secrets`` YAML."""
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(s.model_dump(), Dumper=dumper, sort_keys=False, default_flow_style=False,
                     width=1 << 16).encode("utf-8")


def parse_secrets(data: bytes, *, source: str) -> ClusterSecrets:
    """Parse secrets YAML (plain, not encrypted). ``source`` names the file in errors."""
    try:
        raw: Any = parse_yaml(data, source=source)
    except YamlError as e:
        raise SecretsError(f"not valid YAML: {e}; restore it from a backup") from None
    try:
        return ClusterSecrets.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SecretsError(f"{source}: not a cluster secrets bundle: {where}: {first['msg']} "
                           f"({e.error_count()} problem(s)); restore it from a backup") from None


# --- files -----------------------------------------------------------------------------------------


def secrets_path(home: Path, store_id: str) -> Path:
    return home / "secrets" / f"{store_id}.yaml"


def _fernet(key: str | None) -> Fernet | None:
    if key is None:
        key = os.environ.get(SECRETS_KEY_ENV) or None
    if key is None:
        return None
    try:
        return Fernet(key.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise SecretsError(f"{SECRETS_KEY_ENV} is not a Fernet key (32 url-safe base64-encoded bytes); make one "
                           "with: python -c 'from cryptography.fernet import Fernet; "
                           "print(Fernet.generate_key().decode())'") from None


def load_secrets(home: Path, store_id: str, *, key: str | None = None) -> ClusterSecrets:
    """Read a store's secrets. ``key``: the Fernet key (default: ``EDGEFLEET_SECRETS_KEY``)."""
    path = secrets_path(home, store_id)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SecretsError(f"store {store_id}: no cluster secrets at {path}") from None
    except OSError as e:
        raise SecretsError(f"store {store_id}: cannot read cluster secrets {path}: {e.strerror}") from None
    return decode_secrets(data, store_id=store_id, source=path, key=key)


def decode_secrets(data: bytes, *, store_id: str, source: Path, key: str | None = None) -> ClusterSecrets:
    """Parse a secrets file's content (decrypting it if it is a Fernet token)."""
    path = source
    if data.startswith(_FERNET_PREFIX):
        f = _fernet(key)
        if f is None:
            raise SecretsError(f"store {store_id}: {path} is encrypted; set {SECRETS_KEY_ENV} to the key it was "
                               "written with")
        try:
            data = f.decrypt(data)
        except InvalidToken:
            raise SecretsError(f"store {store_id}: {path} cannot be decrypted with the key in {SECRETS_KEY_ENV} "
                               "(wrong key, or the file is damaged)") from None
    return parse_secrets(data, source=f"store {store_id}: {path}")


def encode_secrets(s: ClusterSecrets, *, key: str | None = None) -> bytes:
    """The file content for a bundle: YAML, Fernet-encrypted when a key is set."""
    data = render_secrets(s)
    f = _fernet(key)
    return f.encrypt(data) if f is not None else data


def write_secrets_file(home: Path, store_id: str, data: bytes) -> Path:
    """Persist encoded secrets: mode 0600, atomically, and never over an existing file (a second
    writer racing us gets ``FileExistsError`` and must load the winner's secrets instead)."""
    path = secrets_path(home, store_id)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, data, mode=0o600, exclusive=True)  # unlike a rename, the link fails if the target exists
    return path


def store_secrets(home: Path, store_id: str, s: ClusterSecrets, *, key: str | None = None) -> Path:
    """Persist a new bundle (see ``write_secrets_file``)."""
    return write_secrets_file(home, store_id, encode_secrets(s, key=key))


def ensure_secrets(home: Path, store_id: str, *, cluster_exists: bool, now: datetime,
                   key: str | None = None) -> ClusterSecrets:
    """The store's secrets: loaded if present; generated and persisted on first provision.

    ``cluster_exists``: the store already has a cluster (or seeds built for one). Then missing
    secrets are an error: generating new ones would split the cluster."""
    path = secrets_path(home, store_id)
    if path.exists():
        return load_secrets(home, store_id, key=key)
    if cluster_exists:
        raise SecretsError(
            f"store {store_id}: its cluster already exists but its secrets file {path} is missing; restore it "
            "from a backup (generating new secrets would split the cluster: new nodes could not join)")
    bundle = generate_secrets(now)
    try:
        store_secrets(home, store_id, bundle, key=key)
    except FileExistsError:
        return load_secrets(home, store_id, key=key)
    return bundle
