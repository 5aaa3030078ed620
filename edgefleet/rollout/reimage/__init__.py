"""How one node is reimaged, step by step: ``Reimager`` (prepare, disrupt, wait, finish, cleanup),
``RedfishReimager`` (virtual media through the BMC) and ``TalosInBandReimager`` (a Talos API reset);
one ``WindowGuard`` and one ``QuorumPolicy`` for both; ``reimage_node`` runs them."""

from edgefleet.rollout.reimage.base import NodeTask, Reimager, WindowGuard
from edgefleet.rollout.reimage.inband import TalosInBandReimager
from edgefleet.rollout.reimage.quorum import QuorumPolicy
from edgefleet.rollout.reimage.redfish import RedfishReimager
from edgefleet.rollout.reimage.runner import reimage_node, reimager_for

__all__ = ["NodeTask", "QuorumPolicy", "RedfishReimager", "Reimager", "TalosInBandReimager", "WindowGuard",
           "reimage_node", "reimager_for"]
