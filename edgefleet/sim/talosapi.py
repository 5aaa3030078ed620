"""The simulator's Talos API: ``machine.MachineService`` over gRPC with mutual TLS on 127.0.0.1.

One port serves every simulated node. Routing is by the ``nodes`` gRPC metadata, as apid does
when ``talosctl -n`` names nodes behind an endpoint: each value is a node name or address, looked
up among the nodes of the store whose OS CA signed the client certificate (stores may reuse the
same addresses). As in apid's one-to-many mode, the reply carries one message per named node and
a node's failure (down, refused) goes in that message's ``metadata.error``/``metadata.status``;
the ``node`` metadata (one-to-one) is accepted too and then a failure is the call's status.

TLS: the server certificate is the simulator's own (``TalosApiTls``: a CA it mints at start,
ECDSA key, SANs 127.0.0.1/localhost), so clients trust ``TalosApiTls.ca_pem`` instead of the
store's OS CA. A client certificate is REQUIRED and must chain to one of the stores' OS CAs (the
TLS layer checks the chain against every store's CA; the set is re-read when the backend says it
changed, so stores whose secrets appear later are served). The servicer then finds WHICH store's
CA signed it (authority key id, then signature) and refuses (PERMISSION_DENIED) a node of another
store, a certificate without a Talos role, and a role below the method's:

    Version, ServiceList, EtcdMemberList   os:reader, os:operator, os:admin
    Reboot                                 os:operator, os:admin
    Bootstrap, Reset                       os:admin
    EtcdRemoveMemberByID, EtcdLeaveCluster os:admin (upstream machined's role table)

Node behaviour (``TalosNodeBackend`` supplies the state; ``MemoryNodes`` is a complete one over
a fleet and its secrets, in ``edgefleet.sim.talosnodes``; the simulator wiring adapts the
simulator's nodes):

* a node that is down answers UNAVAILABLE; a node without a machine config (maintenance mode)
  too; ``EtcdMemberList`` on a worker is UNIMPLEMENTED ("member list is only available on
  control plane nodes"), as upstream;
* ``Bootstrap`` on a control plane with etcd data is ALREADY_EXISTS "etcd data directory is not
  empty" (upstream's exact code and words); on a worker FAILED_PRECONDITION; otherwise the node
  creates the store's etcd cluster and becomes its first member;
* ``EtcdMemberList`` lists every registered member of the store's etcd, also those down (as etcd
  does: a dead machine's member stays until it is removed);
* ``EtcdRemoveMemberByID`` (on a control plane; upstream keeps only the by-id form) removes a
  registered member, also one that is down: an unknown id is NOT_FOUND "etcdserver: member not
  found"; a removal that would leave the remaining members without a started quorum (the last
  member, a healthy one while another is down) fails "etcdserver: unhealthy cluster", as etcd's
  strict reconfiguration check answers (``etcd_may_remove``). Upstream does not refuse a node
  removing its own member; neither does the simulator (``EtcdLeaveCluster`` is the way for that);
* ``EtcdLeaveCluster`` (on a control plane) removes the node's own member under the same quorum
  rule and voids its etcd data; a node that is no member any more succeeds (upstream: "already
  removed, nothing to do"). Upstream retries an unhealthy cluster for five minutes before it
  fails; the simulator fails at once with the same words;
* every call counts against each node it targets (``note_call``: the oracle's per-node counts);
* ``Reset`` with STATE (and EPHEMERAL) wiped drops the node's etcd membership and machine config:
  after its reboot it boots from its NoCloud seed again.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import grpc
import grpc.aio
from cryptography import x509
from google.protobuf import empty_pb2
from google.rpc import status_pb2

from edgefleet.inventory.model import url_host
from edgefleet.sim.talosnodes import MemoryNodes, NodeFault, TalosNodeBackend, etcd_may_remove
from edgefleet.talos.certs import cert_roles, issued_by, mint_ca, mint_server_cert
from edgefleet.talos.proto.common import common_pb2
from edgefleet.talos.proto.machine import machine_pb2 as pb
from edgefleet.talos.proto.machine import machine_pb2_grpc as pb_grpc

__all__ = [
    "METHOD_ROLES",
    "MemoryNodes",
    "NodeFault",
    "TalosApiServer",
    "TalosApiServicer",
    "TalosApiTls",
    "TalosNodeBackend",
    "member_id",
    "start_talos_api",
]

log = logging.getLogger("edgefleet.sim.talos")

_READ = frozenset({"os:reader", "os:operator", "os:admin"})
METHOD_ROLES: Mapping[str, frozenset[str]] = {
    "Version": _READ, "ServiceList": _READ, "EtcdMemberList": _READ,
    "Reboot": frozenset({"os:operator", "os:admin"}),
    "Bootstrap": frozenset({"os:admin"}), "Reset": frozenset({"os:admin"}),
    "EtcdRemoveMemberByID": frozenset({"os:admin"}), "EtcdLeaveCluster": frozenset({"os:admin"}),
}
_UNHEALTHY = "etcdserver: unhealthy cluster"


# --- TLS ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TalosApiTls:
    """The simulator's own CA and its server certificate for 127.0.0.1 / localhost."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def mint(cls, now: datetime) -> TalosApiTls:
        ca_pem, ca_key = mint_ca("edgefleet simulator", now=now)
        cert, key = mint_server_cert(ca_pem, ca_key, ["127.0.0.1", "localhost"], now=now)
        return cls(ca_pem, cert, key)


@dataclass(frozen=True, slots=True)
class _CaIndex:
    by_key_id: Mapping[bytes, tuple[str, x509.Certificate]]
    all: Sequence[tuple[str, x509.Certificate]]
    bundle: bytes


def _index(pems: Mapping[str, bytes], fallback: bytes) -> _CaIndex:
    by_id: dict[bytes, tuple[str, x509.Certificate]] = {}
    every: list[tuple[str, x509.Certificate]] = []
    for sid, pem in pems.items():
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            log.warning("store %s: its OS CA is not a PEM certificate; its clients will be refused", sid)
            continue
        every.append((sid, cert))
        try:
            ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        except x509.ExtensionNotFound:
            continue
        by_id[ski] = (sid, cert)
    bundle = b"".join(pems[sid].strip() + b"\n" for sid, _ in every) or fallback
    return _CaIndex(by_id, every, bundle)


# --- the servicer ----------------------------------------------------------------------------------


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        self.code = code
        self.message = message


class TalosApiServicer(pb_grpc.MachineServiceServicer):
    """``machine.MachineService`` for the simulated nodes of ``backend``."""

    def __init__(self, backend: TalosNodeBackend, tls: TalosApiTls):
        self.backend = backend
        self.tls = tls
        self.calls: dict[str, int] = {}
        self._gen = -1
        self._idx = _index({}, tls.ca_pem)
        self.refresh()

    # TLS material, re-read when the backend's CA set changes
    def refresh(self) -> bool:
        gen = self.backend.ca_generation()
        if gen == self._gen:
            return False
        self._idx = _index(self.backend.os_ca_pems(), self.tls.ca_pem)
        self._gen = gen
        return True

    def server_config(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(self.tls.key_pem, self.tls.cert_pem)],
                                                          root_certificates=self._idx.bundle)

    def _fetch_config(self) -> grpc.ServerCertificateConfiguration | None:
        return self.server_config() if self.refresh() else None

    def credentials(self) -> grpc.ServerCredentials:
        # grpc's stub says the fetcher returns a config; grpc itself takes None as "unchanged"
        fetch = cast(Callable[[], grpc.ServerCertificateConfiguration], self._fetch_config)
        return grpc.dynamic_ssl_server_credentials(self.server_config(), fetch, require_client_authentication=True)

    # who is calling
    def _client_store(self, context: grpc.aio.ServicerContext[Any, Any], method: str) -> str:
        pems = list(context.auth_context().get("x509_pem_cert") or [])
        if not pems:
            raise _Abort(grpc.StatusCode.UNAUTHENTICATED, "no client certificate")
        cert = x509.load_pem_x509_certificate(pems[0])
        store = self._store_of(cert)
        if store is None:
            raise _Abort(grpc.StatusCode.UNAUTHENTICATED, "the client certificate is not signed by any store's OS CA")
        roles = cert_roles(cert)
        if not roles & METHOD_ROLES[method]:
            have = ", ".join(sorted(roles)) or "no role"
            raise _Abort(grpc.StatusCode.PERMISSION_DENIED,
                         f"{method} needs one of {', '.join(sorted(METHOD_ROLES[method]))}; the certificate has {have}")
        return store

    def _store_of(self, cert: x509.Certificate) -> str | None:
        try:
            aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
        except x509.ExtensionNotFound:
            aki = None
        hit = self._idx.by_key_id.get(aki) if aki else None
        if hit is not None:
            return hit[0] if issued_by(cert, hit[1]) else None
        return next((sid for sid, ca in self._idx.all if issued_by(cert, ca)), None)

    def _targets(self, context: grpc.aio.ServicerContext[Any, Any], store: str) -> tuple[list[tuple[str, str]], bool]:
        md = context.invocation_metadata() or ()
        many = [str(v) for k, v in md if k == "nodes"]
        one = [str(v) for k, v in md if k == "node"]
        raw = [t.strip() for v in (many or one) for t in v.split(",") if t.strip()]
        if not raw:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT,
                         "name the target node in the 'nodes' gRPC metadata (talosctl -n NODE); this endpoint "
                         "serves every simulated node")
        out: list[tuple[str, str]] = []
        for t in raw:
            name = self.backend.resolve(store, t)
            if name is None:
                raise _Abort(grpc.StatusCode.PERMISSION_DENIED,
                             f"no node {t!r} in store {store}: the client certificate is from store {store}'s OS "
                             "CA and cannot act on other stores' nodes")
            out.append((t, name))
        return out, bool(many)

    async def _serve(self, method: str, context: grpc.aio.ServicerContext[Any, Any], reply_cls: Any, msg_cls: Any,
                     one: Callable[[str], Any]) -> Any:
        self.calls[method] = self.calls.get(method, 0) + 1
        try:
            store = self._client_store(context, method)
            targets, many = self._targets(context, store)
        except _Abort as a:
            await context.abort(a.code, a.message)
        messages = []
        for shown, name in targets:
            self.backend.note_call(name, method)
            try:
                msg = one(name)
                msg.metadata.CopyFrom(common_pb2.Metadata(hostname=shown))
            except NodeFault as f:
                if not many:
                    await context.abort(f.code, str(f))
                msg = msg_cls()
                msg.metadata.CopyFrom(common_pb2.Metadata(
                    hostname=shown, error=str(f), status=status_pb2.Status(code=f.code.value[0], message=str(f))))
            messages.append(msg)
        return reply_cls(messages=messages)

    # -- methods -----------------------------------------------------------------------------------

    async def Version(self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        def one(node: str) -> pb.Version:
            self.backend.check_up(node)
            tag, platform = self.backend.version(node)
            return pb.Version(version=pb.VersionInfo(tag=tag, os="Talos", arch="amd64"),
                              platform=pb.PlatformInfo(name=platform, mode="metal"),
                              features=pb.FeaturesInfo(rbac=True))
        return await self._serve("Version", context, pb.VersionResponse, pb.Version, one)

    async def ServiceList(self, request: empty_pb2.Empty, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        def one(node: str) -> pb.ServiceList:
            self.backend.check_up(node)
            names = ["apid", "containerd", "cri", "kubelet", "machined", "trustd"]
            out: list[pb.ServiceInfo] = [pb.ServiceInfo(id=n, state="Running", health=pb.ServiceHealth(healthy=True))
                                         for n in names]
            if self.backend.is_control_plane(node):
                member = self.backend.has_etcd_data(node)
                out.append(pb.ServiceInfo(
                    id="etcd", state="Running" if member else "Preparing",
                    health=pb.ServiceHealth(healthy=member, unknown=not member,
                                            last_message="" if member else "waiting for etcd bootstrap or join")))
            out.sort(key=lambda s: s.id)
            return pb.ServiceList(services=out)
        return await self._serve("ServiceList", context, pb.ServiceListResponse, pb.ServiceList, one)

    async def EtcdMemberList(self, request: pb.EtcdMemberListRequest,
                             context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        def one(node: str) -> pb.EtcdMembers:
            self.backend.check_up(node)
            if not self.backend.is_control_plane(node):
                raise NodeFault(grpc.StatusCode.UNIMPLEMENTED, "member list is only available on control plane nodes")
            if not self.backend.has_etcd_data(node):
                raise NodeFault(grpc.StatusCode.FAILED_PRECONDITION,
                                "etcd is not running on this node: the cluster is not bootstrapped (or it has not "
                                "joined yet)")
            store = self.backend.store_of(node)
            members = [pb.EtcdMember(id=member_id(m), hostname=m,
                                     peer_urls=[f"https://{url_host(self.backend.address(m))}:2380"],
                                     client_urls=[f"https://{url_host(self.backend.address(m))}:2379"])
                       for m in self.backend.etcd_roster(store)]
            return pb.EtcdMembers(members=members)
        return await self._serve("EtcdMemberList", context, pb.EtcdMemberListResponse, pb.EtcdMembers, one)

    def _etcd_control_plane(self, node: str, api: str) -> str:
        self.backend.check_up(node)
        if not self.backend.is_control_plane(node):
            raise NodeFault(grpc.StatusCode.UNIMPLEMENTED, f"{api} is only available on control plane nodes")
        store = self.backend.store_of(node)
        if not self.backend.etcd_members(store):
            raise NodeFault(grpc.StatusCode.UNAVAILABLE, "failed to create etcd client: no etcd member is up")
        return store

    async def EtcdRemoveMemberByID(self, request: pb.EtcdRemoveMemberByIDRequest,
                                   context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        def one(node: str) -> pb.EtcdRemoveMemberByID:
            store = self._etcd_control_plane(node, "etcd remove member")
            roster = self.backend.etcd_roster(store)
            member = next((m for m in roster if member_id(m) == request.member_id), None)
            if member is None:
                raise NodeFault(grpc.StatusCode.NOT_FOUND, "etcdserver: member not found")
            if not etcd_may_remove(roster, member):
                raise NodeFault(grpc.StatusCode.UNKNOWN, f"failed to remove member: failed to remove member "
                                                         f"{request.member_id}: {_UNHEALTHY}")
            self.backend.etcd_remove(store, member)
            return pb.EtcdRemoveMemberByID()
        return await self._serve("EtcdRemoveMemberByID", context, pb.EtcdRemoveMemberByIDResponse,
                                 pb.EtcdRemoveMemberByID, one)

    async def EtcdLeaveCluster(self, request: pb.EtcdLeaveClusterRequest,
                               context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        def one(node: str) -> pb.EtcdLeaveCluster:
            store = self._etcd_control_plane(node, "etcd leave")
            roster = self.backend.etcd_roster(store)
            if node in roster:
                if not etcd_may_remove(roster, node):
                    raise NodeFault(grpc.StatusCode.UNKNOWN, f"failed to leave cluster: failed to remove member "
                                                             f"{member_id(node)}: {_UNHEALTHY}")
                self.backend.etcd_remove(store, node)
            return pb.EtcdLeaveCluster()
        return await self._serve("EtcdLeaveCluster", context, pb.EtcdLeaveClusterResponse, pb.EtcdLeaveCluster, one)

    async def Bootstrap(self, request: pb.BootstrapRequest, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        def one(node: str) -> pb.Bootstrap:
            self.backend.check_up(node)
            if not self.backend.is_control_plane(node):
                raise NodeFault(grpc.StatusCode.FAILED_PRECONDITION, "bootstrap is only available on control plane "
                                                                     "nodes")
            if self.backend.has_etcd_data(node):
                raise NodeFault(grpc.StatusCode.ALREADY_EXISTS, "etcd data directory is not empty")
            self.backend.bootstrap(node)
            return pb.Bootstrap()
        return await self._serve("Bootstrap", context, pb.BootstrapResponse, pb.Bootstrap, one)

    async def Reset(self, request: pb.ResetRequest, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        def one(node: str) -> pb.Reset:
            self.backend.check_up(node)
            wipe = frozenset(p.label for p in request.system_partitions_to_wipe if p.wipe)
            self.backend.reset(node, graceful=request.graceful, reboot=request.reboot, wipe=wipe)
            return pb.Reset(actor_id="sim")
        return await self._serve("Reset", context, pb.ResetResponse, pb.Reset, one)

    async def Reboot(self, request: pb.RebootRequest, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        def one(node: str) -> pb.Reboot:
            self.backend.check_up(node)
            self.backend.reboot(node)
            return pb.Reboot(actor_id="sim")
        return await self._serve("Reboot", context, pb.RebootResponse, pb.Reboot, one)



def member_id(name: str) -> int:
    """The etcd member id the simulator gives the member named ``name`` (stable, as ids are)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")


# --- the server --------------------------------------------------------------------------------------


@dataclass
class TalosApiServer:
    """A running Talos API endpoint: dial ``endpoint`` trusting ``ca_pem`` (server name 127.0.0.1)."""

    server: grpc.aio.Server
    servicer: TalosApiServicer
    port: int

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ca_pem(self) -> bytes:
        return self.servicer.tls.ca_pem

    async def stop(self, grace: float | None = 1.0) -> None:
        await self.server.stop(grace)


async def start_talos_api(backend: TalosNodeBackend, *, now: datetime, port: int = 0,
                          tls: TalosApiTls | None = None) -> TalosApiServer:
    """Serve the Talos API for ``backend`` on 127.0.0.1:``port`` (0: any free port)."""
    servicer = TalosApiServicer(backend, tls or TalosApiTls.mint(now))
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_MachineServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    bound = server.add_secure_port(f"127.0.0.1:{port}", servicer.credentials())
    if bound == 0:
        raise OSError(f"cannot listen on 127.0.0.1:{port} for the simulated Talos API")
    await server.start()
    return TalosApiServer(server, servicer, bound)
