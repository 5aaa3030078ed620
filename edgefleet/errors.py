"""The one exception tree of edgefleet.

Every error a user can see is an ``EdgefleetError``. The class says two things a caller needs
without parsing messages:

* ``exit_code``: 2 for bad input (the user must fix a file or an argument), 1 for an operation
  that failed (retrying later, or fixing the world, may help);
* ``transient``: whether retrying the same call may succeed (a BMC timeout) or never will
  (a 401, a schema violation).

::

    EdgefleetError
    ├── InputError                 exit 2: bad input, nothing was written
    │   ├── YamlError              a YAML file is not UTF-8, broken, or over the alias limits
    │   ├── InventoryError         the inventory has one or more problems (all collected)
    │   ├── ConfigRenderError      a Talos config or patch is invalid
    │   ├── ReleaseInputError      bad Packer variables, unknown or revoked release
    │   │   └── ReleaseNotStable   a release not yet stable would reach non-canary stores
    │   ├── SecretsError           missing / undecryptable cluster secrets
    │   ├── UnknownRollout         no rollout with that id in the ledger
    │   ├── UnknownTrain           no release train with that id in the state store
    │   ├── OutputPathError        an output path is a file, under a file, or not writable
    │   ├── NodeOperationRefused   a day-2 node operation that would be unsafe or names no such node
    │   └── SeedError              a NoCloud seed ISO cannot be built or read back
    └── OperationFailed            exit 1: the world did not do what we asked
        ├── ToolMissing            an outside program (packer, xorriso, ...) is not installed
        ├── PackerError            packer validate/build failed
        ├── ArtifactError          an artifact is missing or its sha256 does not match
        ├── BmcError               a Redfish call failed (``transient`` set per case)
        ├── TalosApiError          a Talos gRPC call failed
        │   └── TalosCallFailed    ... naming store, node, operation, gRPC code
        │       ├── TalosUnavailable   UNAVAILABLE / DEADLINE_EXCEEDED (transient)
        │       ├── TalosAccessDenied  UNAUTHENTICATED / PERMISSION_DENIED, refused TLS
        │       └── TalosRefused       FAILED_PRECONDITION / ALREADY_EXISTS
        ├── ProbeError             a health probe could not be evaluated
        │   └── KubeApiError       a store's Kubernetes API could not be read (its certificate not
        │       │                  trusted, a body that is not a node list, key material unusable)
        │       ├── KubeApiUnreachable      no connection, or no answer in time (transient)
        │       ├── KubeCredentialsRefused  HTTP 401/403, or a TLS alert refusing the client
        │       │                           certificate (permanent: retrying sends the same one)
        │       └── KubeApiStatusError      any other HTTP status (transient for 429 and 5xx)
        ├── StoreRunFailed         a store could not be brought to a release (``reason``, ``inconclusive``)
        │   ├── GateFailed         a health gate (node, quorum, store, hook) said no
        │   └── ReimageFailed      a node's reimage could not be carried out
        ├── DrainBlocked           a node's drain gave up: a disruption budget keeps a pod on it
        ├── QuorumAtRisk           a node operation would cost the store its etcd quorum as it is now
        ├── WindowClosed           the maintenance window closes (or a freeze begins) before a step
        ├── LockHeld               another operation holds the store
        │   └── StoreSplit         ... and the store is split: a person must continue its repair
        ├── StateError             the ledger / state store refused an operation
        │   ├── IllegalTransition  a state change the state table does not allow
        │   └── SchemaOutOfDate    the store's schema is behind (`edgefleet db upgrade`) or ahead of this edgefleet
        ├── NetworkSeedError       a node's nocloud-net seed cannot be fetched over HTTP
        ├── ScheduleError          the Prefect API is unreachable or refused a scheduling call
        │   └── SchedulerBusy      ... because its database was busy (transient)
        ├── ServiceStartError      a local service (Prefect server, simulator) did not come up (transient)
        └── ReportError            the rollout report cannot be written
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class EdgefleetError(Exception):
    """Base of every error edgefleet raises on purpose."""

    exit_code: int = 1
    transient: bool = False


class InputError(EdgefleetError):
    """The user's input is wrong; nothing was written. Exit code 2."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem found in an input file, located as precisely as the parser allows."""

    message: str
    file: str | None = None
    line: int | None = None  # 1-based
    store: str | None = None
    node: str | None = None
    field: str | None = None
    hint: str | None = None

    def render(self) -> str:
        where = self.file or "<input>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        who = ""
        if self.store:
            who = f" store {self.store}"
        if self.node:
            who += f" node {self.node}"
        fld = f" [{self.field}]" if self.field else ""
        text = f"{where}:{who}{fld} {self.message}"
        if self.hint:
            text += f" (hint: {self.hint})"
        return text


class YamlError(InputError):
    """A YAML file cannot be read: not UTF-8, broken YAML, a key given twice, aliases over the
    expansion limit. ``problem`` says where (file and line)."""

    def __init__(self, problem: Problem):
        self.problem = problem
        super().__init__(problem.render())


class InventoryError(InputError):
    """The inventory has problems. ``problems`` holds all of them, found in one pass."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        n = len(self.problems)
        head = f"inventory has {n} problem{'s' if n != 1 else ''}"
        super().__init__(head + ":\n" + "\n".join("  " + p.render() for p in self.problems))


class ConfigRenderError(InputError):
    """A Talos machine config (or a patch merged into it) is invalid."""


class ReleaseInputError(InputError):
    """Bad release input: Packer variables, an unknown or revoked release."""


class ReleaseNotStable(ReleaseInputError):
    """A release that is not ``stable`` would reach stores outside the canary stage (a rollout,
    a provision or a scheduled run). ``release``, ``state`` and ``stores`` (the non-canary ones)
    say which; the message names the fix (a release train, or ``--force --reason TEXT``)."""

    def __init__(self, message: str, *, release: str = "", state: str = "", stores: Sequence[str] = ()):
        self.release = release
        self.state = state
        self.stores = tuple(stores)
        super().__init__(message)


class SecretsError(InputError):
    """Cluster secrets are missing, unreadable or would have to be regenerated unsafely."""


class UnknownRollout(InputError):
    """A rollout id that the ledger does not hold (a typo, or another state store)."""


class UnknownTrain(InputError):
    """A release train id that the state store does not hold (a typo, or another state store)."""


class OutputPathError(InputError):
    """An output path (``--out``, a home directory) cannot be written: it is a file where a directory
    is needed (or the reverse, or a device), lies under a regular file, or sits in a directory this
    process cannot write. Raised before anything is written."""


class NodeOperationRefused(InputError):
    """A day-2 node operation refused before anything was touched: the node is not in the
    inventory, the last control plane, a MAC already used by another node (message: which)."""


class OperationFailed(EdgefleetError):
    """An operation against the outside world failed. Exit code 1."""


class ToolMissing(OperationFailed):
    """An outside program is not installed; the message names the package that provides it."""


class PackerError(OperationFailed):
    """``packer validate`` or ``packer build`` failed."""


class ArtifactError(OperationFailed):
    """An artifact is missing, or its content does not match its recorded sha256."""


class BmcError(OperationFailed):
    """A Redfish call failed. ``transient`` says whether retrying may help; ``attempts``: how often
    the request was sent (1 for an action the connector would not repeat, e.g. a reset answered 500)."""

    def __init__(self, message: str, *, bmc: str = "", operation: str = "", transient: bool = False,
                 status: int | None = None, attempts: int = 1):
        self.bmc = bmc
        self.operation = operation
        self.transient = transient
        self.status = status
        self.attempts = attempts
        self.message = message  # without the BMC and operation it names
        prefix = f"BMC {bmc}: {operation}: " if bmc or operation else ""
        super().__init__(prefix + message)


class TalosApiError(OperationFailed):
    """A Talos API (gRPC) call failed."""


class ProbeError(OperationFailed):
    """A health probe could not be evaluated (as opposed to evaluated and failing)."""


class KubeApiError(ProbeError):
    """A store's Kubernetes API could not be read. ``endpoint`` and ``store`` say which; ``status``
    is the HTTP status when there was one; ``detail`` what happened (the message without them)."""

    def __init__(self, message: str, *, endpoint: str = "", store: str = "", status: int | None = None,
                 transient: bool | None = None):
        self.endpoint = endpoint
        self.store = store
        self.status = status
        self.detail = message  # what happened, without the store and the endpoint
        if transient is not None:
            self.transient = transient
        where = f"Kubernetes API {endpoint}: " if endpoint else "Kubernetes API: "
        super().__init__((f"store {store}: " if store else "") + where + message)


class KubeApiUnreachable(KubeApiError):
    """No connection to the API, or no answer within the deadline: retrying later may help."""

    transient = True


class KubeCredentialsRefused(KubeApiError):
    """The API refused our credentials: HTTP 401/403, or a TLS alert refusing the client
    certificate. Permanent: asking again presents the same certificate."""


class KubeApiStatusError(KubeApiError):
    """The API answered an HTTP status other than 200, 401 or 403 (transient for 429 and 5xx)."""


class StoreRunFailed(OperationFailed):
    """A store could not be brought to a release. ``reason``: why, for the ledger (secrets already
    redacted by the caller); ``inconclusive``: it says nothing about the release (an API or a BMC
    that did not answer), so the wave gate may ask a person instead of counting it failed."""

    def __init__(self, reason: str, *, inconclusive: bool = False):
        self.reason = reason
        self.inconclusive = inconclusive
        super().__init__(reason)


class GateFailed(StoreRunFailed):
    """A health gate said no: a node, the control-plane quorum, the store, or a hook."""


class ReimageFailed(StoreRunFailed):
    """A node's reimage could not be carried out (no BMC, a refused action, no seed, no window)."""


class WindowClosed(OperationFailed):
    """The maintenance window would close (or a freeze begin) before the next disruptive step."""

    transient = True


class DrainBlocked(OperationFailed):
    """A node's drain gave up after its retries: the message names the pod and the disruption
    budget that keeps it (``pod``, ``budget``), and what to do."""

    def __init__(self, message: str, *, pod: str = "", budget: str = ""):
        self.pod = pod
        self.budget = budget
        super().__init__(message)


class QuorumAtRisk(OperationFailed):
    """A node operation would leave the store's etcd without quorum given which members are up
    now (a control plane down): wait until they are healthy, or repair the one that is down."""


class LockHeld(OperationFailed):
    """Another operation holds the store's lock; the message names the holder."""


class StoreSplit(LockHeld):
    """The store's lock is kept by an operation that left it split across releases; the message
    names the command that continues its repair."""


class StateError(OperationFailed):
    """The state store refused an operation (unknown rollout, invalid transition, ...)."""


class IllegalTransition(StateError):
    """A state change that ``edgefleet.rollout.states.TRANSITIONS`` does not allow."""


class SchemaOutOfDate(StateError):
    """The state store's schema revision is not this edgefleet's head: behind it (the message names
    ``edgefleet db upgrade``) or ahead of it (written by a newer edgefleet). ``store`` (its URL without
    password), ``revision`` (None: written before schema revisions existed) and ``head`` say which."""

    def __init__(self, message: str, *, store: str = "", revision: str | None = None, head: str = ""):
        self.store = store
        self.revision = revision
        self.head = head
        super().__init__(message)


class SeedError(InputError):
    """A NoCloud seed cannot be built or read back (not an ISO, no CIDATA label, a file missing)."""


class TalosCallFailed(TalosApiError):
    """A Talos API call failed. ``store``, ``node`` and ``operation`` say where; ``code`` is the
    gRPC status name (``UNAVAILABLE``, ...); ``transient`` whether retrying may help."""

    def __init__(self, message: str, *, store: str = "", node: str = "", operation: str = "", code: str = "",
                 transient: bool | None = None):
        self.store = store
        self.node = node
        self.operation = operation
        self.code = code
        if transient is not None:
            self.transient = transient
        where = " ".join(p for p in (f"store {store}" if store else "", f"node {node}" if node else "",
                                     operation) if p)
        super().__init__(f"Talos API {where}: {message}" if where else f"Talos API: {message}")


class TalosUnavailable(TalosCallFailed):
    """The node did not answer (UNAVAILABLE, DEADLINE_EXCEEDED): retrying later may help."""

    transient = True


class TalosAccessDenied(TalosCallFailed):
    """The node refused our client certificate or its role (UNAUTHENTICATED, PERMISSION_DENIED)."""


class TalosRefused(TalosCallFailed):
    """The node refused the call in its current state (FAILED_PRECONDITION, ALREADY_EXISTS), e.g. a
    second Bootstrap."""


class ScheduleError(OperationFailed):
    """The Prefect API could not be reached or refused a scheduling call (create, list, cancel runs);
    the message names the API URL or the deployment and what to do."""


class SchedulerBusy(ScheduleError):
    """The Prefect server refused a scheduling call because its database was busy (a SQLite file
    another writer holds): asking again shortly may succeed."""

    transient = True


class ServiceStartError(OperationFailed):
    """A local service this job starts itself (a Prefect server, the fleet simulator) exited or did
    not answer its health check in time; the message names it, its log and what to do."""

    transient = True


class NetworkSeedError(OperationFailed):
    """A node's NoCloud network seed (``ds=nocloud-net``) could not be fetched or is not the node's.
    ``status`` is the HTTP status (None: no answer); ``transient`` whether retrying may help."""

    def __init__(self, message: str, *, status: int | None = None, transient: bool = False):
        self.status = status
        self.transient = transient
        super().__init__(message)


class ReportError(OperationFailed):
    """The rollout report could not be written (the message names the path and what to do)."""


def error_kind(e: BaseException) -> str:
    """A short, bounded label for what went wrong, recorded in the ledger's events beside the
    message (``detail.bmc_error`` / ``detail.talos_error``) and counted by the metrics
    (``edgefleet.metrics``): ``http_503`` for a BMC or seed server that answered with a status,
    ``unreachable`` for one that did not answer (transient, no status), ``refused`` for any other
    permanent BMC failure (TLS, credentials, a body that is not Redfish); the gRPC code for a
    Talos call (``unavailable``, ``permission_denied``, ...); otherwise the class name in
    snake_case (``secrets_error``)."""
    if isinstance(e, BmcError | NetworkSeedError):
        if e.status is not None:
            return f"http_{e.status}"
        return "unreachable" if e.transient else "refused"
    if isinstance(e, TalosCallFailed) and e.code:
        return e.code.lower()
    name = type(e).__name__
    return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name))
