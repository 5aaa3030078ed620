"""One simulated machine and its BMC: power, boot override, virtual media, installed release and
labels (``NodeState``), the values its Redfish service accepts, and the refusal of an action
(``ActionError``). ``edgefleet.sim.fleet`` changes these states; the HTTP layers read them."""

from __future__ import annotations

from edgefleet.errors import EdgefleetError
from edgefleet.inventory.model import Node, Role, Store
from edgefleet.sim.boot import RELEASE_LABEL
from edgefleet.sim.media import Media

__all__ = ["BOOT_ENABLED", "BOOT_TARGETS", "POWER_OFF", "POWER_ON", "RESET_TYPES", "SLOT_IDS", "ActionError",
           "NodeState"]

SLOT_IDS = ("Cd", "Usb")
POWER_ON, POWER_OFF = "On", "Off"
RESET_TYPES = ("On", "ForceOff", "GracefulShutdown", "GracefulRestart", "ForceRestart", "PowerCycle", "Nmi")
BOOT_TARGETS = ("None", "Pxe", "Cd", "Usb", "Hdd", "BiosSetup")
BOOT_ENABLED = ("Disabled", "Once", "Continuous")


class ActionError(EdgefleetError):
    """A BMC action the simulated BMC refuses; ``status`` and ``message_id`` shape the Redfish error."""

    def __init__(self, message: str, *, status: int = 400, message_id: str = "Base.1.8.GeneralError"):
        self.status = status
        self.message_id = message_id
        super().__init__(message)


class NodeState:
    """One simulated machine and its BMC."""

    __slots__ = ("boot_enabled", "boot_from_media", "boot_gen", "boot_target", "booting", "generation", "joined",
                 "kubelet_version", "labels", "media", "node", "operation", "password", "power", "reason", "release",
                 "seed_instance_id", "sessions", "store", "talos_version", "username")

    def __init__(self, node: Node, store: Store, username: str, password: str, release: str, talos_version: str):
        self.node = node
        self.store = store
        self.username = username
        self.password = password
        self.power = POWER_ON
        self.boot_target = "None"
        self.boot_enabled = "Disabled"
        self.media: dict[str, Media] = {}
        self.booting = False
        self.boot_gen = 0
        self.boot_from_media = False
        self.joined = True
        self.reason = "installed release is running"
        self.release = release
        self.talos_version = talos_version
        self.kubelet_version = "v" + store.cluster.kubernetes_version.lstrip("v")
        self.labels: dict[str, str] | None = None  # None: the initial labels (computed on read)
        self.seed_instance_id: str | None = None
        self.operation: str | None = None  # the operation this node is mid-reimage for
        self.sessions: dict[str, str] | None = None
        self.generation = 1

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def is_control_plane(self) -> bool:
        return self.node.role is Role.controlplane

    @property
    def rebooting(self) -> bool:
        return self.power == POWER_OFF or self.booting

    def node_labels(self) -> dict[str, str]:
        base = {"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux"}
        if self.is_control_plane:
            base["node-role.kubernetes.io/control-plane"] = ""
        if self.labels is None:
            base[RELEASE_LABEL] = self.release
        else:
            base.update(self.labels)
        return base


