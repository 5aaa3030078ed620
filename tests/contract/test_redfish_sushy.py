"""Conformance of the Redfish driver against sushy-tools' sushy-emulator (fake driver), a real
third-party Redfish implementation, on 127.0.0.1: the full reimage sequence with basic auth over
http, and over TLS 1.2 with CA-bundle verification and with sha256 fingerprint pinning.

The emulator runs from its own venv (EDGEFLEET_SUSHY_VENV, else <repo>/.cache/sushy-venv); the
tests skip when it is absent, except under CI=true where that is a failure. One emulator per
configuration is shared by the module.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import hashlib
import http.server
import ipaddress
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgefleet.errors import BmcError
from edgefleet.inventory.model import Bmc, BmcTls, CredentialsRef, Node, Role
from edgefleet.redfish import (
    BmcClients,
    PowerState,
    RedfishDriver,
    ReimageStep,
    RetryPolicy,
    Timeouts,
    connector_for_node,
    eject_reimage_media,
    reimage_sequence,
)

pytestmark = [pytest.mark.slow, pytest.mark.clock]

REPO = Path(__file__).resolve().parents[2]
USER = "fleetadmin"
PASSWORD = "s3cret-Pa55-w0rd-42"
PASSWORD_ENV = "EDGEFLEET_TEST_BMC_PASSWORD"
ENV = {PASSWORD_ENV: PASSWORD}
SYSTEMS = [f"node-{i}" for i in range(10)]
POWER_DEADLINE_S = 25.0  # the fake driver applies power changes 1-11 s after the action


def sushy_venv() -> Path:
    venv = Path(os.environ.get("EDGEFLEET_SUSHY_VENV") or REPO / ".cache" / "sushy-venv")
    if not (venv / "bin" / "sushy-emulator").exists():
        reason = f"sushy-emulator not found in {venv} (run scripts/ensure-sushy .cache/sushy-venv)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return venv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Sushy:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    ca_file: Path | None = None
    fingerprint: str | None = None


def make_tls(d: Path) -> tuple[Path, Path, Path, str]:
    """A CA and a server certificate for 127.0.0.1 signed by it; returns (ca, cert, key, sha256)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgefleet test BMC CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bmc.test")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path, cert_path, key_path = d / "ca.pem", d / "bmc.pem", d / "bmc.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    fp = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return ca_path, cert_path, key_path, fp


def start_sushy(d: Path, *, tls: bool) -> Sushy:
    venv = sushy_venv()
    d.mkdir(parents=True, exist_ok=True)
    # bcrypt with the lowest cost: the emulator checks the password on every request.
    hashed = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import bcrypt,sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt(4)).decode())", PASSWORD],
        check=True, capture_output=True, text=True).stdout.strip()
    (d / "htpasswd").write_text(f"{USER}:{hashed}\n")
    port = free_port()
    systems = [{"uuid": f"00000000-0000-4000-8000-{i:012d}", "name": name, "power_state": "Off",
                "nics": [{"mac": f"02:00:00:00:00:{i:02x}", "ip": f"192.0.2.{i + 10}"}]}
               for i, name in enumerate(SYSTEMS)]
    conf = d / "sushy.conf"
    conf.write_text(
        f'SUSHY_EMULATOR_LISTEN_IP = "127.0.0.1"\nSUSHY_EMULATOR_LISTEN_PORT = {port}\n'
        f"SUSHY_EMULATOR_FAKE_DRIVER = True\nSUSHY_EMULATOR_FAKE_SYSTEMS = {systems!r}\n"
        f'SUSHY_EMULATOR_STATE_DIR = "{d / "state"}"\nSUSHY_EMULATOR_AUTH_FILE = "{d / "htpasswd"}"\n')
    cmd = [str(venv / "bin" / "sushy-emulator"), "--config", str(conf)]
    ca = fp = None
    if tls:
        ca, cert, key, fp = make_tls(d)
        cmd += ["--ssl-certificate", str(cert), "--ssl-key", str(key)]
    log = d / "sushy.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUSHY_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sushy-emulator exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("sushy-emulator did not listen within 30 s")
    return Sushy(url=url, proc=proc, log=log, ca_file=ca, fingerprint=fp)


def stop(s: Sushy) -> None:
    s.proc.terminate()
    try:
        s.proc.wait(10)
    except subprocess.TimeoutExpired:
        s.proc.kill()
        s.proc.wait(5)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A small boot ISO and seed ISO served by http.server on 127.0.0.1 (InsertMedia downloads them)."""
    d = tmp_path_factory.mktemp("images")
    (d / "talos-boot.iso").write_bytes(b"\0" * 32768 + b"CD001" + os.urandom(4096))
    (d / "seed.iso").write_bytes(b"\0" * 32768 + b"CD001cidata" + os.urandom(1024))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(d)))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    yield {"boot": f"{base}/talos-boot.iso", "seed": f"{base}/seed.iso", "missing": f"{base}/nope.iso"}
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def sushy_http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sushy]:
    s = start_sushy(tmp_path_factory.mktemp("sushy-http"), tls=False)
    yield s
    stop(s)


@pytest.fixture(scope="module")
def sushy_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sushy]:
    s = start_sushy(tmp_path_factory.mktemp("sushy-tls"), tls=True)
    yield s
    stop(s)


def node(name: str, url: str, *, tls: BmcTls | None = None, password_env: str = PASSWORD_ENV) -> Node:
    return Node(name=name, role=Role.controlplane, mac="02:00:00:00:01:01", ip=ipaddress.IPv4Address("192.0.2.1"),
                bmc=Bmc(url=url, credentials=CredentialsRef(username=USER, password_env=password_env),
                        tls=tls or BmcTls(), vendor=None, allow_http=True))


def driver_for(n: Node, clients: BmcClients, *, environ: dict[str, str] = ENV, **kw: Any) -> RedfishDriver:
    conn = connector_for_node(n, clients, environ=environ, retry=RetryPolicy(attempts=2, backoff_s=0.1), **kw)
    return RedfishDriver(conn, system_id=n.name, poll_interval_s=0.5)


async def check_reimage(drv: RedfishDriver, images: dict[str, str]) -> None:
    result = await reimage_sequence(drv, images["boot"], images["seed"], power_deadline_s=POWER_DEADLINE_S)
    assert (result.boot_slot, result.seed_slot) == ("Cd", "Floppy")
    assert result.reset_types in (("On",), ("ForceRestart",))
    assert await drv.power_state() is PowerState.on
    slots = {s.id: s for s in await drv.media_slots()}
    assert slots["Cd"].inserted and slots["Cd"].image == images["boot"]
    assert slots["Floppy"].inserted and slots["Floppy"].image == images["seed"]
    sysbody = await drv.system()
    assert sysbody["Boot"]["BootSourceOverrideTarget"] == "Cd"
    assert drv.quirks.name == "sushy-emulator"  # detected from Manufacturer


def test_reimage_sequence_basic_auth(sushy_http: Sushy, images: dict[str, str],
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def run() -> None:
        async with BmcClients() as clients:
            drv = driver_for(node(SYSTEMS[0], sushy_http.url), clients, operation_id="op-test-1")
            await check_reimage(drv, images)
            # A second reimage of a powered-on node: stale media ejected, ForceRestart, On again.
            again = await reimage_sequence(drv, images["boot"], images["seed"], power_deadline_s=POWER_DEADLINE_S)
            assert again.ejected_before == ("Cd", "Floppy")
            assert again.reset_types == ("ForceRestart",)
            assert await eject_reimage_media(drv) == ("Cd", "Floppy")
            assert not any(s.inserted for s in await drv.media_slots())

    asyncio.run(run())
    assert PASSWORD not in caplog.text
    assert PASSWORD not in sushy_http.log.read_text()


class _Stop(Exception):
    """Raised by a test's ``before_step`` hook, as the rollout engine's window guard would."""


def test_before_step_hook_sees_each_step_and_can_stop_the_sequence(sushy_http: Sushy, images: dict[str, str]) -> None:
    """The hook the rollout engine guards the maintenance window with: awaited before each step the
    store notices, in order, with the emulator's state showing the previous steps done and the
    next one not yet; a hook that raises stops the sequence before its step."""
    async def run() -> None:
        async with BmcClients() as clients:
            drv = driver_for(node(SYSTEMS[8], sushy_http.url), clients)
            await eject_reimage_media(drv)
            seen: list[tuple[str, bool, bool, Any]] = []

            async def record(step: ReimageStep) -> None:
                slots = {s.id: s for s in await drv.media_slots()}
                target = (await drv.system())["Boot"].get("BootSourceOverrideTarget")
                seen.append((step.value, slots["Cd"].inserted, slots["Floppy"].inserted, target))

            result = await reimage_sequence(drv, images["boot"], images["seed"], power_deadline_s=POWER_DEADLINE_S,
                                            before_step=record)
            assert [s[0] for s in seen] == ["insert_boot", "insert_seed", "boot_override", "reset"]
            assert seen[0][1:3] == (False, False) and seen[1][1:3] == (True, False)
            assert seen[2][1:3] == (True, True) and seen[3][1:] == (True, True, "Cd")
            assert result.reset_types and await drv.power_state() is PowerState.on

            # Stopped before the seed goes in: the boot image is in, the seed slot untouched.
            await eject_reimage_media(drv)

            async def stop_at_seed(step: ReimageStep) -> None:
                if step is ReimageStep.insert_seed:
                    raise _Stop()

            with pytest.raises(_Stop):
                await reimage_sequence(drv, images["boot"], images["seed"], power_deadline_s=POWER_DEADLINE_S,
                                       before_step=stop_at_seed)
            slots = {s.id: s for s in await drv.media_slots()}
            assert slots["Cd"].inserted and not slots["Floppy"].inserted
            assert await eject_reimage_media(drv) == ("Cd",)

    asyncio.run(run())


def test_wrong_password_is_a_typed_401(sushy_http: Sushy, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def missing_env() -> None:
        async with BmcClients() as clients:
            with pytest.raises(BmcError) as ei:
                driver_for(node(SYSTEMS[1], sushy_http.url), clients, environ={})
            # a clear, non-transient error naming the node and the variable
            e = ei.value
            assert not e.transient and e.bmc == SYSTEMS[1] and PASSWORD_ENV in str(e)

    asyncio.run(missing_env())

    async def wrong() -> None:
        async with BmcClients() as clients:
            conn = connector_for_node(node(SYSTEMS[1], sushy_http.url), clients, environ={PASSWORD_ENV: "wr0ng-Pw-x7"})
            with pytest.raises(BmcError) as ei:
                await RedfishDriver(conn, system_id=SYSTEMS[1]).power_state()
            e = ei.value
            assert e.status == 401 and not e.transient and e.bmc == SYSTEMS[1]
            assert e.operation == "find the system" and "credentials" in str(e)

    asyncio.run(wrong())
    assert "wr0ng-Pw-x7" not in caplog.text


def test_emulator_faults_are_typed(sushy_http: Sushy, images: dict[str, str]) -> None:
    """The emulator's own errors: a 404 image -> 400 on InsertMedia, PowerCycle -> 501, an unknown
    system -> 404; each a non-transient BmcError carrying the Redfish error message."""
    async def run() -> None:
        async with BmcClients() as clients:
            drv = driver_for(node(SYSTEMS[2], sushy_http.url), clients)
            slots = await drv.media_slots()
            cd = next(s for s in slots if s.id == "Cd")
            with pytest.raises(BmcError) as ei:
                await drv.insert_media(cd, images["missing"])
            assert ei.value.status == 400 and not ei.value.transient and "Cd" in ei.value.operation
            target = (await drv.system())["Actions"]["#ComputerSystem.Reset"]["target"]
            with pytest.raises(BmcError) as ei:
                await drv.conn.post(target, {"ResetType": "PowerCycle"}, "reset")
            assert ei.value.status == 501 and not ei.value.transient
            with pytest.raises(BmcError) as ei:
                await drv.conn.get("/redfish/v1/Systems/no-such-system", "read the system")
            assert ei.value.status == 404 and SYSTEMS[2] in str(ei.value)
            bad = RedfishDriver(drv.conn, system_id="no-such-node")
            with pytest.raises(BmcError, match="no system with Id/Name"):
                await bad.system_path()

    asyncio.run(run())


def test_reimage_sequence_tls_ca_bundle_and_pinning(sushy_tls: Sushy, images: dict[str, str],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    assert sushy_tls.ca_file and sushy_tls.fingerprint
    caplog.set_level(logging.DEBUG)
    pin = ":".join(sushy_tls.fingerprint[i:i + 2] for i in range(0, 64, 2))  # colon form, like openssl prints

    async def run() -> None:
        async with BmcClients() as clients:
            by_ca = driver_for(node(SYSTEMS[3], sushy_tls.url, tls=BmcTls(ca_file=str(sushy_tls.ca_file))),
                               clients)
            pinned = driver_for(node(SYSTEMS[4], sushy_tls.url, tls=BmcTls(fingerprint=pin)), clients)
            await asyncio.gather(check_reimage(by_ca, images), check_reimage(pinned, images))

    asyncio.run(run())
    assert PASSWORD not in caplog.text


def test_tls_refusals(sushy_tls: Sushy, caplog: pytest.LogCaptureFixture) -> None:
    """Default trust refuses the self-signed BMC; a wrong pin refuses before any request is sent;
    insecure works and is logged once per BMC."""
    caplog.set_level(logging.INFO)

    async def run() -> None:
        async with BmcClients(Timeouts(call_deadline_s=10)) as clients:
            default = driver_for(node(SYSTEMS[5], sushy_tls.url), clients)
            with pytest.raises(BmcError) as ei:
                await default.power_state()
            assert not ei.value.transient and "TLS verification failed" in str(ei.value)

            before = sushy_tls.log.read_text().count("GET /redfish/v1")
            wrong = driver_for(node(SYSTEMS[5], sushy_tls.url, tls=BmcTls(fingerprint="ab" * 32)), clients)
            with pytest.raises(BmcError) as ei:
                await wrong.power_state()
            assert not ei.value.transient and "pins" in str(ei.value)
            await asyncio.sleep(0.2)
            assert sushy_tls.log.read_text().count("GET /redfish/v1") == before

            for _ in range(2):
                insecure = driver_for(node(SYSTEMS[5], sushy_tls.url, tls=BmcTls(insecure=True)), clients)
                assert await insecure.power_state() in (PowerState.on, PowerState.off)

    asyncio.run(run())
    warnings = [r for r in caplog.records if "verification is OFF" in r.getMessage()]
    assert len(warnings) == 1 and SYSTEMS[5] in warnings[0].getMessage()
    assert PASSWORD not in caplog.text


def test_measure_reimage_rate(sushy_http: Sushy, images: dict[str, str]) -> None:
    """Reimage sequences per second through the driver against the emulator (small N, concurrent).
    Dominated by the emulator's 1-11 s power delay; printed for the benchmark record."""
    names = SYSTEMS[6:8]

    async def run() -> float:
        async with BmcClients() as clients:
            drivers = [driver_for(node(n, sushy_http.url), clients) for n in names]
            t0 = time.monotonic()
            await asyncio.gather(*(reimage_sequence(d, images["boot"], images["seed"],
                                                    power_deadline_s=POWER_DEADLINE_S) for d in drivers))
            return time.monotonic() - t0

    elapsed = asyncio.run(run())
    rate = len(names) / elapsed
    sys.stdout.write(f"\nsushy reimage: {len(names)} sequences in {elapsed:.1f} s = {rate:.2f}/s\n")
    assert rate > 0


def test_plain_http_needs_opt_in(sushy_http: Sushy) -> None:
    n = node(SYSTEMS[0], sushy_http.url)
    assert n.bmc is not None
    strict = n.model_copy(update={"bmc": n.bmc.model_copy(update={"allow_http": False})})

    async def run() -> None:
        async with BmcClients() as clients:
            with pytest.raises(BmcError, match="allow_http"):
                connector_for_node(strict, clients, environ=ENV)

    asyncio.run(run())
    assert httpx.URL(sushy_http.url).scheme == "http"
