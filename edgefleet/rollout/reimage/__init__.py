"""How one node is reimaged, step by step, for either method: ``Reimager`` (prepare, disrupt,
wait, finish, cleanup) with ``RedfishReimager`` (virtual media through the BMC) and
``TalosInBandReimager`` (a Talos API reset from the network seed); one ``WindowGuard`` and one
``QuorumPolicy`` (etcd membership health, Bootstrap exactly once) for both; ``reimage_node`` runs them."""

from edgefleet.rollout.reimage.base import NodeTask, Reimager, WindowGuard
from edgefleet.rollout.reimage.inband import TalosInBandReimager
from edgefleet.rollout.reimage.quorum import QuorumPolicy
from edgefleet.rollout.reimage.redfish import RedfishReimager
from edgefleet.rollout.reimage.runner import reimage_node, reimager_for

__all__ = ["NodeTask", "QuorumPolicy", "RedfishReimager", "Reimager", "TalosInBandReimager", "WindowGuard",
           "reimage_node", "reimager_for"]
