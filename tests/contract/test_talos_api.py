"""The Talos API adapter against the simulator's Talos API: real gRPC, real mutual TLS on 127.0.0.1.

Two stores with the SAME node addresses (stores reuse subnets), each with its own secrets. The
client is ``edgefleet.talos.api`` as the pipeline uses it (``client_for``); the server is
``edgefleet.sim.talosapi`` over ``MemoryNodes``.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2

from edgefleet.errors import SecretsError, TalosAccessDenied, TalosCallFailed, TalosRefused, TalosUnavailable
from edgefleet.inventory.model import Fleet, Store
from edgefleet.retry import RetryPolicy
from edgefleet.secrets import ClusterSecrets, KeyAndCert, generate_secrets, store_secrets
from edgefleet.sim.talosapi import MemoryNodes, TalosApiServer, start_talos_api
from edgefleet.talos.api import TalosClient, client_for
from edgefleet.talos.certs import TalosRole, mint_ca, mint_os_client_cert
from edgefleet.talos.proto.machine import machine_pb2_grpc as pb_grpc

pytestmark = pytest.mark.clock

# Certificates meet the real clock in every TLS handshake, so they are minted at the real time
# (``make test`` runs this module again with the clock two years ahead). The simulator's own clock,
# which decides maintenance windows, is a fixed instant: a Wednesday noon, outside every window.
NOW = datetime.now(UTC).replace(microsecond=0)
SIM_CLOCK = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def _store(sid: str, n_cp: int, n_worker: int) -> Store:
    nodes = [{"name": f"{sid}-cp{i + 1}", "role": "controlplane", "mac": f"02:ef:00:00:0{len(sid)}:{i + 1:02x}",
              "ip": f"10.20.0.{10 + i}"} for i in range(n_cp)]
    nodes += [{"name": f"{sid}-w{i + 1}", "role": "worker", "mac": f"02:ef:00:00:1{len(sid)}:{i + 1:02x}",
               "ip": f"10.20.0.{20 + i}"} for i in range(n_worker)]
    return Store.model_validate({
        "id": sid, "name": sid.upper(), "country": "DK", "region": "nordics", "timezone": "Europe/Copenhagen",
        "maintenance_windows": [{"days": ["daily"], "start": "22:00", "end": "05:00"}],
        "network": {"subnet": "10.20.0.0/24", "gateway": "10.20.0.1", "dns": ["10.0.0.53"]},
        "cluster": {"name": sid}, "nodes": nodes})


@dataclass
class World:
    home: Path
    fleet: Fleet
    secrets: dict[str, ClusterSecrets]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    home = tmp_path_factory.mktemp("home")
    fleet = Fleet(name="t", stores={"aa": _store("aa", 3, 1), "bbb": _store("bbb", 1, 0), "ccc": _store("ccc", 1, 0)})
    secrets = {}
    for sid in ("aa", "bbb"):  # ccc has no secrets yet
        secrets[sid] = generate_secrets(NOW)
        store_secrets(home, sid, secrets[sid])
    return World(home, fleet, secrets)


def run(body: Callable[[TalosApiServer, MemoryNodes], Awaitable[None]], world: World, *,
        formed: frozenset[str] = frozenset()) -> None:
    async def main() -> None:
        nodes = MemoryNodes.from_home(world.fleet, world.home, formed=formed)
        server = await start_talos_api(nodes, now=NOW)
        try:
            await asyncio.wait_for(body(server, nodes), 60)
        finally:
            await server.stop(0)
    asyncio.run(main())


def client(world: World, server: TalosApiServer, store: str, node: str, role: TalosRole = TalosRole.reader,
           **kw: Any) -> TalosClient:
    s = world.fleet.stores[store]
    n = next(x for x in s.nodes if x.name == node)
    return client_for(world.home, s, n, role, now=NOW, endpoint=server.endpoint, ca_pem=server.ca_pem,
                      server_name="127.0.0.1", timeout_s=kw.pop("timeout_s", 5.0), **kw)


def test_version_services_and_figures(world: World) -> None:
    figures: dict[str, float] = {}

    async def body(server: TalosApiServer, nodes: MemoryNodes) -> None:
        c = client(world, server, "aa", "aa-cp1")
        async with c:
            t = time.perf_counter()
            v = await c.version()
            figures["first call (connect + mTLS handshake) ms"] = (time.perf_counter() - t) * 1000
            assert (v.node, v.tag, v.platform) == ("10.20.0.10", "v1.12.0", "nocloud")
            t = time.perf_counter()
            for _ in range(200):
                await c.version()
            figures["warm call ms"] = (time.perf_counter() - t) / 200 * 1000
            svc = {s.id: s for s in await c.services()}
            assert svc["etcd"].healthy is True and svc["kubelet"].state == "Running"
            w = await c.version(node="aa-w1")  # by name, through the same endpoint
            assert w.node == "aa-w1"

    run(body, world, formed=frozenset({"aa"}))
    print(f"\nTalos API over mTLS on 127.0.0.1: {figures}")
    assert figures["warm call ms"] < 50


def test_certificate_from_another_store_is_refused(world: World) -> None:
    async def body(server: TalosApiServer, nodes: MemoryNodes) -> None:
        # a store-bbb admin certificate naming store aa's node by name: refused, not retried
        async with client(world, server, "bbb", "bbb-cp1", TalosRole.admin) as c:
            with pytest.raises(TalosAccessDenied, match="store bbb") as e:
                await c.reset(node="aa-cp1")
            assert e.value.code == "PERMISSION_DENIED" and not e.value.transient
        assert nodes.nodes["aa-cp1"].etcd and nodes.nodes["aa-cp1"].boots == 0
        # the same address means the node of the certificate's own store
        async with client(world, server, "bbb", "bbb-cp1") as c:
            assert (await c.version(node="10.20.0.10")).node == "10.20.0.10"
        # a certificate from a CA no store has: the TLS layer refuses it (permanent, not retried)
        ca, key = mint_ca("stranger", now=NOW)
        stranger = world.secrets["aa"].model_copy(update={"certs": world.secrets["aa"].certs.model_copy(update={
            "os": KeyAndCert(crt=base64.b64encode(ca).decode(), key=base64.b64encode(key).decode())})})
        cert = mint_os_client_cert(stranger, TalosRole.admin, now=NOW)
        t = time.perf_counter()
        async with TalosClient(server.endpoint, ca_pem=server.ca_pem, cert_pem=cert.cert_pem, key_pem=cert.key_pem,
                               server_name="127.0.0.1", node="aa-cp1", timeout_s=5) as c:
            with pytest.raises(TalosCallFailed) as e2:
                await c.version()
        assert e2.value.code in ("UNAVAILABLE", "UNAUTHENTICATED")
        assert time.perf_counter() - t < 4

    run(body, world, formed=frozenset({"aa", "bbb"}))


def test_reader_cannot_reset_or_bootstrap(world: World) -> None:
    async def body(server: TalosApiServer, nodes: MemoryNodes) -> None:
        async with client(world, server, "aa", "aa-cp1", TalosRole.reader) as c:
            with pytest.raises(TalosAccessDenied, match="os:admin"):
                await c.reset()
            with pytest.raises(TalosAccessDenied):
                await c.bootstrap()
            with pytest.raises(TalosAccessDenied):
                await c.reboot()
        async with client(world, server, "aa", "aa-cp1", TalosRole.operator) as c:
            await c.reboot()  # operators may reboot
            with pytest.raises(TalosAccessDenied):
                await c.reset()
        assert nodes.nodes["aa-cp1"].etcd and nodes.nodes["aa-cp1"].configured
        assert server.servicer.calls["Reset"] == 2  # refused calls were not retried

    run(body, world, formed=frozenset({"aa"}))


def test_bootstrap_once_then_refused_and_members_follow_control_planes(world: World) -> None:
    async def body(server: TalosApiServer, nodes: MemoryNodes) -> None:
        async with client(world, server, "aa", "aa-cp1", TalosRole.admin) as c:
            with pytest.raises(TalosRefused, match="not bootstrapped"):
                await c.etcd_members()  # unformed: etcd not running
            with pytest.raises(TalosCallFailed, match="UNIMPLEMENTED"):
                await c.etcd_members(node="aa-w1")
            with pytest.raises(TalosRefused, match="FAILED_PRECONDITION"):
                await c.bootstrap(node="aa-w1")
            await c.bootstrap()
            assert [m.hostname for m in await c.etcd_members()] == ["aa-cp1"]
            with pytest.raises(TalosRefused, match="ALREADY_EXISTS: etcd data directory is not empty") as e:
                await c.bootstrap()
            assert e.value.code == "ALREADY_EXISTS"
            # the other control planes join on their next boot
            await c.reboot(node="aa-cp2")
            await c.reboot(node="aa-cp3")
            assert sorted(m.hostname for m in await c.etcd_members()) == ["aa-cp1", "aa-cp2", "aa-cp3"]
            with pytest.raises(TalosRefused, match="ALREADY_EXISTS"):
                await c.bootstrap(node="aa-cp3")
            # a control plane going down stays a registered member (as in etcd); its call is UNAVAILABLE
            nodes.nodes["aa-cp3"].up = False
            assert sorted(m.hostname for m in await c.etcd_members()) == ["aa-cp1", "aa-cp2", "aa-cp3"]
            with pytest.raises(TalosUnavailable, match="aa-cp3 is down"):
                await c.version(node="aa-cp3")

    run(body, world)


def test_etcd_member_removal_and_leave_keep_quorum(world: World) -> None:
    """EtcdRemoveMemberByID and EtcdLeaveCluster as upstream: os:admin only, control planes only,
    NOT_FOUND for an unknown member, and etcd's quorum check: never the last member, never a
    healthy member while another is down; a member that is down may be removed."""
    from edgefleet.sim.talosapi import member_id

    async def body(server: TalosApiServer, nodes: MemoryNodes) -> None:
        async with client(world, server, "aa", "aa-cp1", TalosRole.operator) as c:
            with pytest.raises(TalosAccessDenied, match="os:admin"):
                await c.etcd_leave()
            with pytest.raises(TalosAccessDenied, match="os:admin"):
                await c.etcd_remove_member(member_id("aa-cp2"))
        async with client(world, server, "aa", "aa-cp1", TalosRole.admin) as c:
            with pytest.raises(TalosCallFailed, match="UNIMPLEMENTED: etcd leave is only available on control plane"):
                await c.etcd_leave(node="aa-w1")
            with pytest.raises(TalosCallFailed, match="NOT_FOUND: etcdserver: member not found") as nf:
                await c.etcd_remove_member(12345)
            assert nf.value.code == "NOT_FOUND"
            nodes.nodes["aa-cp3"].up = False  # a dead machine: its member stays registered
            with pytest.raises(TalosCallFailed, match="unhealthy cluster"):
                await c.etcd_leave(node="aa-cp2")  # would leave cp1 alone with dead cp3: no quorum
            with pytest.raises(TalosCallFailed, match="unhealthy cluster"):
                await c.etcd_remove_member(member_id("aa-cp2"))
            assert nodes.nodes["aa-cp2"].etcd
            await c.etcd_remove_member(member_id("aa-cp3"))  # the dead one may go
            assert [m.hostname for m in await c.etcd_members()] == ["aa-cp1", "aa-cp2"]
            await c.etcd_leave(node="aa-cp2")
            assert [m.hostname for m in await c.etcd_members()] == ["aa-cp1"]
            await c.etcd_leave(node="aa-cp2")  # no member any more: nothing to do, as upstream
            with pytest.raises(TalosCallFailed, match=r"failed to leave cluster: .*unhealthy cluster"):
                await c.etcd_leave()  # the last member
            assert nodes.nodes["aa-cp1"].etcd
        assert nodes.calls[("aa-cp2", "EtcdLeaveCluster")] == 3  # the refused one was not retried
        assert ("aa-w1", "EtcdLeaveCluster") in nodes.calls and ("aa-cp3", "EtcdLeaveCluster") not in nodes.calls

    run(body, world, formed=frozenset({"aa"}))


def test_reset_wipe_clears_the_node(world: World) -> None:
    async def body(server: TalosApiServer, nodes: MemoryNodes) -> None:
        nodes.seeded = False
        async with client(world, server, "bbb", "bbb-cp1", TalosRole.admin) as c:
            await c.reset(graceful=False, reboot=True, wipe_labels=("STATE", "EPHEMERAL"))
            f = nodes.nodes["bbb-cp1"]
            assert (f.etcd, f.configured, f.up, f.boots) == (False, False, True, 1)
            with pytest.raises(TalosUnavailable, match="maintenance mode"):
                await c.version()
            nodes.seeded = True  # the seed is back: the next boot reads it; a 1-node store needs bootstrap
            nodes.reboot("bbb-cp1")
            with pytest.raises(TalosRefused):
                await c.etcd_members()
            await c.bootstrap()
            assert [m.hostname for m in await c.etcd_members()] == ["bbb-cp1"]

    run(body, world, formed=frozenset({"bbb"}))


def test_store_without_secrets(world: World) -> None:
    s = world.fleet.stores["ccc"]
    with pytest.raises(SecretsError, match="store ccc"):
        client_for(world.home, s, s.nodes[0], TalosRole.reader, now=NOW)


def test_secrets_appearing_later_are_served(world: World, tmp_path: Path) -> None:
    async def body(server: TalosApiServer, nodes: MemoryNodes) -> None:
        late = generate_secrets(NOW)
        cert = mint_os_client_cert(late, TalosRole.reader, now=NOW, store_id="ccc")
        nodes.add_ca("ccc", cert.ca_pem)
        async with TalosClient(server.endpoint, ca_pem=server.ca_pem, cert_pem=cert.cert_pem, key_pem=cert.key_pem,
                               server_name="127.0.0.1", node="ccc-cp1", timeout_s=5, store="ccc") as c:
            assert (await c.version()).tag == "v1.12.0"

    run(body, world)


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A TCP listener on 127.0.0.1 that accepts connections and never says a word."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_deadline_fires_on_a_silent_node(world: World, silent_listener: int) -> None:
    cert = mint_os_client_cert(world.secrets["aa"], TalosRole.reader, now=NOW)

    async def main() -> tuple[float, TalosCallFailed]:
        c = TalosClient(f"127.0.0.1:{silent_listener}", ca_pem=cert.ca_pem, cert_pem=cert.cert_pem,
                        key_pem=cert.key_pem, timeout_s=0.5, node="10.20.0.10", store="aa",
                        retry=RetryPolicy(attempts=2, backoff_s=0.05, backoff_max_s=0.1, jitter=True))
        t = time.perf_counter()
        try:
            await c.version()
        except TalosCallFailed as e:
            return time.perf_counter() - t, e
        finally:
            await c.close()
        raise AssertionError("a node that never answers answered")

    took, err = asyncio.run(main())
    assert isinstance(err, TalosUnavailable) and err.transient and err.code == "DEADLINE_EXCEEDED"
    assert "store aa" in str(err) and "Version" in str(err)
    assert 0.9 < took < 2.5, took  # two attempts of 0.5 s, plus a short backoff


def test_sleeping_servicer_hits_the_deadline_and_bootstrap_is_not_retried() -> None:
    """A node that accepts TLS but never answers a Bootstrap: DEADLINE_EXCEEDED, one attempt only."""
    calls: list[str] = []

    class Sleepy(pb_grpc.MachineServiceServicer):
        async def Bootstrap(self, request: Any, context: Any) -> Any:
            calls.append("Bootstrap")
            await asyncio.sleep(30)

        async def Version(self, request: empty_pb2.Empty, context: Any) -> Any:
            calls.append("Version")
            await asyncio.sleep(30)

    async def main() -> None:
        secrets = generate_secrets(NOW)
        ca, ca_key = mint_ca("server", now=NOW)
        from edgefleet.talos.certs import mint_server_cert
        srv_cert, srv_key = mint_server_cert(ca, ca_key, ["127.0.0.1"], now=NOW)
        cert = mint_os_client_cert(secrets, TalosRole.admin, now=NOW)
        server = grpc.aio.server()
        pb_grpc.add_MachineServiceServicer_to_server(Sleepy(), server)  # type: ignore[no-untyped-call]
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
            [(srv_key, srv_cert)], root_certificates=cert.ca_pem, require_client_auth=True))
        await server.start()
        try:
            async with TalosClient(f"127.0.0.1:{port}", ca_pem=ca, cert_pem=cert.cert_pem, key_pem=cert.key_pem,
                                   timeout_s=0.3, node="n1",
                                   retry=RetryPolicy(attempts=3, backoff_s=0.01, backoff_max_s=2.0, jitter=True)) as c:
                with pytest.raises(TalosUnavailable, match="DEADLINE_EXCEEDED"):
                    await c.bootstrap()
                assert calls == ["Bootstrap"]  # a write that may have run is not retried on a deadline
                with pytest.raises(TalosUnavailable, match="DEADLINE_EXCEEDED"):
                    await c.version()
                assert calls.count("Version") == 3  # reads are retried, bounded
        finally:
            await server.stop(0)

    asyncio.run(main())


def test_committed_modules_are_what_the_protos_generate(tmp_path: Path) -> None:
    """Regenerating from the .proto files gives the committed *_pb2 modules byte for byte."""
    import importlib.util
    import os

    from edgefleet.talos.proto.generate import PROTO_DIR, generate, generated_files

    if importlib.util.find_spec("grpc_tools") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("grpcio-tools is not installed; the dev dependencies must include it")
        pytest.skip("grpcio-tools is not installed")
    generate(tmp_path)
    for rel in generated_files():
        assert (tmp_path / rel).read_bytes() == (PROTO_DIR / rel).read_bytes(), (
            f"{rel} differs from what its .proto generates: run python -m edgefleet.talos.proto.generate")


def test_wire_names_match_upstream() -> None:
    """The method paths and field numbers a real apid dispatches on."""
    from edgefleet.talos.proto.common import common_pb2
    from edgefleet.talos.proto.machine import machine_pb2 as pb

    svc = pb.DESCRIPTOR.services_by_name["MachineService"]
    assert svc.full_name == "machine.MachineService"
    assert {m.name for m in svc.methods} == {"Bootstrap", "EtcdMemberList", "EtcdRemoveMemberByID",
                                             "EtcdLeaveCluster", "Reboot", "Reset", "ServiceList", "Version"}
    assert pb.EtcdRemoveMemberByIDRequest.DESCRIPTOR.fields_by_name["member_id"].number == 1
    f = pb.ResetRequest.DESCRIPTOR.fields_by_name
    assert (f["graceful"].number, f["reboot"].number, f["system_partitions_to_wipe"].number, f["mode"].number) == (
        1, 2, 3, 5)
    assert pb.EtcdMember.DESCRIPTOR.fields_by_name["hostname"].number == 3
    md = common_pb2.Metadata.DESCRIPTOR.fields_by_name
    assert (md["hostname"].number, md["error"].number, md["status"].number) == (1, 2, 3)
    status_type = md["status"].message_type
    assert status_type is not None and status_type.full_name == "google.rpc.Status"


def test_simulator_nodes_behind_the_talos_api(world: World) -> None:
    """The wiring over the fleet simulator: reset-wipe, seed re-read, unformed until Bootstrap."""
    from edgefleet.sim.boot import SeedFacts
    from edgefleet.sim.build import build_sim
    from edgefleet.sim.media import Media
    from edgefleet.sim.scenario import Scenario
    from edgefleet.sim.talos_serve import running_talos_api
    from edgefleet.sim.talos_wiring import SimTalosBackend

    async def main() -> None:
        sim = build_sim(world.fleet, scenario=Scenario(boot_seconds=60), time_scale=60.0, clock=SIM_CLOCK,
                        home=world.home, environ={})
        async with running_talos_api(sim, ca_out=world.home / "ca.pem") as server:
            backend = server.servicer.backend
            assert isinstance(backend, SimTalosBackend)
            assert (world.home / "ca.pem").read_bytes() == server.ca_pem

            def admin(store: str, node: str) -> TalosClient:
                return client(world, server, store, node, TalosRole.admin)

            async def settle() -> None:
                for _ in range(200):
                    await asyncio.sleep(0.05)
                    if not sim.rebooting:
                        return
                raise AssertionError("boots did not finish")

            async with admin("aa", "aa-cp1") as c:
                assert (await c.version()).tag == "v1.12.6"
                assert [m.hostname for m in await c.etcd_members()] == ["aa-cp1", "aa-cp2", "aa-cp3"]
                with pytest.raises(TalosRefused, match="ALREADY_EXISTS"):
                    await c.bootstrap()
                await c.reset(node="aa-cp3")
                with pytest.raises(TalosUnavailable, match="booting"):
                    await c.version(node="aa-cp3")
                await settle()
                with pytest.raises(TalosUnavailable, match="maintenance mode"):
                    await c.version(node="aa-cp3")  # no seed media: it waits for its seed
                assert [m.hostname for m in await c.etcd_members()] == ["aa-cp1", "aa-cp2"]
                assert backend.formed("aa")
            kinds = [e["kind"] for e in sim.events if e["node"] == "aa-cp3"]
            assert kinds[:2] == ["talos_reset", "reset"] and {"boot_start", "boot_done"} <= set(kinds)
            # the simulator's oracle judges a Talos API reset like a BMC one (12:00 is outside the window)
            assert {v.rule for v in sim.violations if v.node == "aa-cp3"} >= {"outside_window"}, sim.violations

            # a 1-node store: wipe it, give it its seed, and it stays unformed until Bootstrap
            ns = sim.nodes["bbb-cp1"]
            k8s_ca = base64.b64decode(world.secrets["bbb"].certs.k8s.crt)
            ns.media["Cd"] = Media(url="http://127.0.0.1:1/seed.iso", sha256="0" * 64, size=1, kind="seed",
                                   seed=SeedFacts(sha256="0" * 64, instance_id="i-1", hostname="bbb-cp1",
                                                  ca_pem=k8s_ca, macs=frozenset({ns.node.mac}),
                                                  addresses=frozenset({str(ns.node.ip)})))
            async with admin("bbb", "bbb-cp1") as c:
                await c.reset(wipe_labels=("STATE", "EPHEMERAL"))
                assert not backend.formed("bbb")
                await settle()
                backend.sync()  # what the follow task does every 0.2 s
                assert ns.joined, ns.reason  # read its seed again
                assert not backend.formed("bbb")
                with pytest.raises(TalosRefused):
                    await c.etcd_members()
                await c.bootstrap()
                assert backend.formed("bbb")
                assert [m.hostname for m in await c.etcd_members()] == ["bbb-cp1"]

    asyncio.run(main())
