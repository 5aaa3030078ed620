"""The Talos API adapter: the one module that talks gRPC to Talos nodes (apid, port 50000).

Every call goes through ``TalosClient._call``, which owns what a caller should not have to
think about:

* mutual TLS: the client certificate is minted from the store's OS CA (``edgefleet.talos.certs``)
  with a role in its organization; the server certificate is checked against a CA PEM
  (the store's OS CA for real nodes, the simulator's CA in tests) and ``server_name``;
* a deadline on every call (``timeout_s``); the channel never uses an HTTP proxy;
* routing: the target node goes in the ``nodes`` gRPC metadata, as ``talosctl -n`` does, so an
  endpoint (a control plane, or the simulator) proxies the call to it. Replies then carry one
  message per node whose ``metadata.error``/``metadata.status`` hold a per-node failure; those
  are raised like call failures;
* errors: gRPC status codes become ``TalosCallFailed`` subclasses in one table (``_ERRORS``):
  UNAVAILABLE / DEADLINE_EXCEEDED -> ``TalosUnavailable`` (transient), UNAUTHENTICATED /
  PERMISSION_DENIED -> ``TalosAccessDenied``, FAILED_PRECONDITION / ALREADY_EXISTS ->
  ``TalosRefused``, anything else -> ``TalosCallFailed`` (permanent). A TLS handshake the server
  rejected (wrong CA, wrong server name) is permanent too (``TalosAccessDenied``);
* retries: through the one retry policy (``edgefleet.retry``; default ``TALOS_RETRY``: 3 tries,
  exponential backoff with full jitter), only for transient failures. Reads retry both transient
  codes; Bootstrap / Reset / Reboot retry only UNAVAILABLE
  (the call may have run when its deadline fired; a retried Bootstrap that had run comes back
  ALREADY_EXISTS, which ``bootstrap`` reports as ``TalosRefused``).

Usage::

    async with client_for(home, store, node, TalosRole.reader) as c:
        v = await c.version()
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import ip_address
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar

import grpc
import grpc.aio
from google.protobuf import empty_pb2

from edgefleet.errors import TalosAccessDenied, TalosCallFailed, TalosRefused, TalosUnavailable
from edgefleet.inventory.model import Node, Store, url_host
from edgefleet.retry import RetryPolicy, is_transient, retrying
from edgefleet.secrets import load_secrets
from edgefleet.talos.certs import TalosRole, mint_os_client_cert
from edgefleet.talos.proto.machine import machine_pb2 as pb
from edgefleet.talos.proto.machine import machine_pb2_grpc as pb_grpc

__all__ = [
    "APID_PORT",
    "TALOS_RETRY",
    "EtcdMember",
    "NodeVersion",
    "ServiceStatus",
    "TalosClient",
    "client_for",
    "endpoint_with_port",
    "map_error",
]

APID_PORT = 50000
DEFAULT_TIMEOUT_S = 10.0
WIPE_LABELS = ("STATE", "EPHEMERAL")
_T = TypeVar("_T")

_ERRORS: dict[grpc.StatusCode, type[TalosCallFailed]] = {
    grpc.StatusCode.UNAVAILABLE: TalosUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: TalosUnavailable,
    grpc.StatusCode.UNAUTHENTICATED: TalosAccessDenied,
    grpc.StatusCode.PERMISSION_DENIED: TalosAccessDenied,
    grpc.StatusCode.FAILED_PRECONDITION: TalosRefused,
    grpc.StatusCode.ALREADY_EXISTS: TalosRefused,
}
_BY_NUMBER = {c.value[0]: c for c in grpc.StatusCode}
# Substrings of grpc's UNAVAILABLE details when the TLS handshake itself was refused: a wrong CA or
# server name does not heal by retrying.
_TLS_REFUSED = ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed", "Tls handshake failed",
                "TSI_PROTOCOL_FAILURE", "Peer name", "is not in peer certificate")


# Bounded retries of transient failures: 3 tries in all, backoff doubling from 0.2 s up to 2 s, with
# full jitter (many stores' clients retrying at once do not retry in step).
TALOS_RETRY = RetryPolicy(attempts=3, backoff_s=0.2, backoff_max_s=2.0, jitter=True)


@dataclass(frozen=True, slots=True)
class NodeVersion:
    node: str
    tag: str
    sha: str
    arch: str
    platform: str


@dataclass(frozen=True, slots=True)
class EtcdMember:
    id: int
    hostname: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    id: str
    state: str
    healthy: bool | None  # None: health unknown (the service has no health check)
    message: str


class _HasMetadata(Protocol):
    @property
    def metadata(self) -> Any: ...


def map_error(code: grpc.StatusCode, details: str, *, store: str, node: str, operation: str) -> TalosCallFailed:
    """The typed error for a gRPC status (the one place codes become exceptions)."""
    cls = _ERRORS.get(code, TalosCallFailed)
    transient: bool | None = None
    if cls is TalosUnavailable and code is grpc.StatusCode.UNAVAILABLE and any(s in details for s in _TLS_REFUSED):
        cls, transient = TalosAccessDenied, False
        details += " (the TLS handshake was refused: check the CA and the server name)"
    return cls(f"{code.name}: {details}", store=store, node=node, operation=operation, code=code.name,
               transient=transient)


class TalosClient:
    """A client for one Talos API endpoint; ``node`` (an address or name) is the default target,
    sent as the ``nodes`` metadata. Use as an async context manager, or call ``close``."""

    def __init__(self, endpoint: str, *, ca_pem: bytes, cert_pem: bytes, key_pem: bytes,
                 server_name: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S, node: str | None = None,
                 store: str = "", retry: RetryPolicy = TALOS_RETRY, rng: random.Random | None = None):
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.endpoint = endpoint_with_port(endpoint)
        self.node = node
        self.store = store
        self.timeout_s = timeout_s
        self.retry = retry
        self._rng = rng or random.Random()
        options: list[tuple[str, Any]] = [("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        creds = grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem,
                                             certificate_chain=cert_pem)
        self._channel = grpc.aio.secure_channel(self.endpoint, creds, options=options)
        self._stub = pb_grpc.MachineServiceStub(self._channel)  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> TalosClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    # -- the choke point -----------------------------------------------------------------------

    async def _call(self, operation: str, node: str | None, send: Callable[[Any, float], Awaitable[_T]], *,
                    idempotent: bool) -> _T:
        target = node or self.node
        who = target or self.endpoint
        metadata = (("nodes", target),) if target else None

        async def once() -> _T:
            try:
                reply = await send(metadata, self.timeout_s)
            except grpc.aio.AioRpcError as e:
                raise map_error(e.code(), e.details() or "", store=self.store, node=who,
                                operation=operation) from None
            err = self._reply_error(reply, operation, who)
            if err is not None:
                raise err
            return reply

        def retryable(e: BaseException) -> bool:
            # A write may have run when its deadline fired: repeated only when it was not delivered.
            return is_transient(e) and (idempotent or getattr(e, "code", "") == grpc.StatusCode.UNAVAILABLE.name)

        return await retrying(self.retry, once, retry_if=retryable, rng=self._rng)

    def _reply_error(self, reply: Any, operation: str, who: str) -> TalosCallFailed | None:
        """A per-node failure carried in a proxied reply's ``metadata`` (apid's one-to-many mode)."""
        messages: Sequence[_HasMetadata] = getattr(reply, "messages", ())
        for m in messages:
            md = m.metadata
            if md.error:
                code = _BY_NUMBER.get(md.status.code, grpc.StatusCode.UNKNOWN) if md.HasField("status") else (
                    grpc.StatusCode.UNKNOWN)
                return map_error(code, md.error, store=self.store, node=md.hostname or who, operation=operation)
        return None

    # -- calls ---------------------------------------------------------------------------------

    async def version(self, *, node: str | None = None) -> NodeVersion:
        reply = await self._call("Version", node, lambda md, t: self._stub.Version(
            empty_pb2.Empty(), metadata=md, timeout=t), idempotent=True)
        if not reply.messages:
            raise TalosCallFailed("Version returned no message", store=self.store, node=node or self.node or "",
                                  operation="Version")
        m = reply.messages[0]
        return NodeVersion(node=m.metadata.hostname or node or self.node or "", tag=m.version.tag,
                           sha=m.version.sha, arch=m.version.arch, platform=m.platform.name)

    async def etcd_members(self, *, node: str | None = None) -> list[EtcdMember]:
        """The etcd members as the (control plane) node sees them."""
        reply = await self._call("EtcdMemberList", node, lambda md, t: self._stub.EtcdMemberList(
            pb.EtcdMemberListRequest(query_local=False), metadata=md, timeout=t), idempotent=True)
        out: list[EtcdMember] = []
        for m in reply.messages[:1]:
            out.extend(EtcdMember(id=x.id, hostname=x.hostname, peer_urls=tuple(x.peer_urls),
                                  client_urls=tuple(x.client_urls), is_learner=x.is_learner) for x in m.members)
        return out

    async def services(self, *, node: str | None = None) -> list[ServiceStatus]:
        reply = await self._call("ServiceList", node, lambda md, t: self._stub.ServiceList(
            empty_pb2.Empty(), metadata=md, timeout=t), idempotent=True)
        out: list[ServiceStatus] = []
        for m in reply.messages[:1]:
            for s in m.services:
                healthy = None if (not s.HasField("health") or s.health.unknown) else s.health.healthy
                out.append(ServiceStatus(id=s.id, state=s.state, healthy=healthy, message=s.health.last_message))
        return out

    async def bootstrap(self, *, node: str | None = None) -> None:
        """Make the control plane create the cluster's etcd. A node that already has etcd data
        refuses with ALREADY_EXISTS (``TalosRefused``)."""
        await self._call("Bootstrap", node, lambda md, t: self._stub.Bootstrap(
            pb.BootstrapRequest(), metadata=md, timeout=t), idempotent=False)

    async def reset(self, *, graceful: bool = True, reboot: bool = True,
                    wipe_labels: Sequence[str] | None = WIPE_LABELS, node: str | None = None) -> None:
        """Reset the node: ``graceful`` leaves etcd first; ``wipe_labels`` are the system partitions
        to wipe (None or empty: all of them, which also removes the installed system)."""
        parts = [pb.ResetPartitionSpec(label=lbl, wipe=True) for lbl in (wipe_labels or ())]
        req = pb.ResetRequest(graceful=graceful, reboot=reboot, system_partitions_to_wipe=parts,
                              mode=pb.ResetRequest.SYSTEM_DISK)
        await self._call("Reset", node, lambda md, t: self._stub.Reset(req, metadata=md, timeout=t),
                         idempotent=False)

    async def etcd_remove_member(self, member_id: int, *, node: str | None = None) -> None:
        """Remove the etcd member ``member_id`` through control plane ``node`` (a member whose
        machine is gone; a running node leaves with ``etcd_leave``). An unknown member is
        NOT_FOUND; a removal that would break quorum fails "etcdserver: unhealthy cluster"."""
        await self._call("EtcdRemoveMemberByID", node, lambda md, t: self._stub.EtcdRemoveMemberByID(
            pb.EtcdRemoveMemberByIDRequest(member_id=member_id), metadata=md, timeout=t), idempotent=False)

    async def etcd_leave(self, *, node: str | None = None) -> None:
        """Make control plane ``node`` leave the etcd cluster (its etcd data is void afterwards)."""
        await self._call("EtcdLeaveCluster", node, lambda md, t: self._stub.EtcdLeaveCluster(
            pb.EtcdLeaveClusterRequest(), metadata=md, timeout=t), idempotent=False)

    async def reboot(self, *, node: str | None = None) -> None:
        await self._call("Reboot", node, lambda md, t: self._stub.Reboot(
            pb.RebootRequest(), metadata=md, timeout=t), idempotent=False)


def endpoint_with_port(endpoint: str) -> str:
    """``host:port`` for gRPC: a bare host gets apid's port; a bare IPv6 address its brackets."""
    try:
        return f"{url_host(ip_address(endpoint))}:{APID_PORT}"
    except ValueError:
        pass
    return endpoint if ":" in endpoint.rsplit("]", 1)[-1] else f"{endpoint}:{APID_PORT}"


def client_for(home: Path, store: Store, node: Node, role: TalosRole, *, now: datetime | None = None,
               endpoint: str | None = None, ca_pem: bytes | None = None, server_name: str | None = None,
               timeout_s: float = DEFAULT_TIMEOUT_S, retry: RetryPolicy = TALOS_RETRY) -> TalosClient:
    """A client acting on ``node`` with a fresh ``role`` certificate from the store's secrets.

    By default it dials the node itself (``<ip>:50000``) and trusts the store's OS CA. Through
    another endpoint (a control plane, the simulator) give ``endpoint``; a server not signed by
    the store's OS CA (the simulator) needs its ``ca_pem`` and ``server_name``. ``now`` starts the
    certificate's validity (default: the current time). Raises
    ``SecretsError`` when the store has no secrets."""
    secrets = load_secrets(home, store.id)
    cert = mint_os_client_cert(secrets, role, now=now or datetime.now(UTC), store_id=store.id)
    return TalosClient(endpoint or endpoint_with_port(str(node.ip)), ca_pem=ca_pem or cert.ca_pem,
                       cert_pem=cert.cert_pem, key_pem=cert.key_pem, server_name=server_name, timeout_s=timeout_s,
                       node=str(node.ip), store=store.id, retry=retry)
