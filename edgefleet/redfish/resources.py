"""Redfish resources as values, and the pure choices made from them: power states, virtual media
slots (``parse_media_slot``), which slots hold the boot image and the seed (``choose_slots``: a BMC
with a single slot is refused with the fallback to name), and which ResetTypes restart a node
(``choose_reset``). No I/O: ``edgefleet.redfish.driver`` reads the resources and acts on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from edgefleet.errors import BmcError
from edgefleet.redfish.quirks import VendorQuirks

__all__ = ["MediaSlot", "PowerState", "SlotPlan", "choose_reset", "choose_slots", "link", "members",
           "parse_media_slot"]

CD_TYPES = frozenset({"CD", "DVD"})
REMOVABLE_TYPES = frozenset({"USBStick", "Floppy"})


class PowerState(StrEnum):
    """Redfish ``PowerState`` values."""

    on = "On"
    off = "Off"
    powering_on = "PoweringOn"
    powering_off = "PoweringOff"
    paused = "Paused"


@dataclass(frozen=True, slots=True)
class MediaSlot:
    """One VirtualMedia resource as read from the BMC."""

    path: str  # its @odata.id
    id: str
    media_types: frozenset[str]
    inserted: bool
    image: str | None
    insert_target: str | None
    eject_target: str | None

    @property
    def is_cd(self) -> bool:
        return bool(self.media_types & CD_TYPES)

    @property
    def is_removable(self) -> bool:
        return bool(self.media_types & REMOVABLE_TYPES)


@dataclass(frozen=True, slots=True)
class SlotPlan:
    boot: MediaSlot
    seed: MediaSlot


def parse_media_slot(body: dict[str, Any]) -> MediaSlot:
    """A ``MediaSlot`` from a VirtualMedia resource body (pure)."""
    actions = body.get("Actions") if isinstance(body.get("Actions"), dict) else {}
    assert isinstance(actions, dict)

    def target(name: str) -> str | None:
        a = actions.get(name)
        t = a.get("target") if isinstance(a, dict) else None
        return t if isinstance(t, str) else None

    types = body.get("MediaTypes")
    image = body.get("Image")
    return MediaSlot(
        path=str(body.get("@odata.id", "")),
        id=str(body.get("Id", "")),
        media_types=frozenset(t for t in types if isinstance(t, str)) if isinstance(types, list) else frozenset(),
        inserted=bool(body.get("Inserted")),
        image=image if isinstance(image, str) and image else None,
        insert_target=target("#VirtualMedia.InsertMedia"),
        eject_target=target("#VirtualMedia.EjectMedia"),
    )


def choose_slots(slots: Sequence[MediaSlot], *, bmc: str = "") -> SlotPlan:
    """Pick the boot-image slot (a CD/DVD slot) and the seed slot (a second CD/DVD slot, else a
    USB stick / removable slot). Pure. A BMC with one usable slot is refused with a clear error."""
    usable = [s for s in slots if s.insert_target is not None or s.path]
    cds = [s for s in usable if s.is_cd]
    if not cds:
        found = ", ".join(f"{s.id} {sorted(s.media_types)}" for s in usable) or "none"
        raise BmcError(f"no CD/DVD virtual media slot to boot from (slots: {found})", bmc=bmc,
                       operation="choose media slots")
    boot = cds[0]
    others = [s for s in usable if s.path != boot.path]
    seed = next((s for s in others if s.is_cd), None) or next((s for s in others if s.is_removable), None)
    if seed is None:
        raise BmcError(
            f"the BMC has a single virtual media slot ({boot.id}); the reimage needs two, one for the "
            "boot image and one for the NoCloud seed. Set this store's wipe_method to talos-api (the "
            "seed is then served over the network from seed_url) or give the BMC a second slot",
            bmc=bmc, operation="choose media slots")
    return SlotPlan(boot=boot, seed=seed)


def choose_reset(allowed: Sequence[str] | None, quirks: VendorQuirks) -> tuple[str, ...]:
    """The ResetType sequence to restart a powered-on node: ``ForceRestart`` when allowed, else
    ``ForceOff`` then ``On``. ``allowed`` is ``ResetType@Redfish.AllowableValues`` (None: not
    advertised, assume the standard set). Pure."""
    ok = set(allowed) if allowed is not None else {"ForceRestart", "ForceOff", "On"}
    ok -= quirks.unsupported_reset_types
    if "ForceRestart" in ok:
        return ("ForceRestart",)
    on = "On" if "On" in ok else "ForceOn" if "ForceOn" in ok else None
    off = "ForceOff" if "ForceOff" in ok else "GracefulShutdown" if "GracefulShutdown" in ok else None
    if on is None or off is None:
        raise BmcError(f"the BMC allows no usable ResetType (allowed: {sorted(ok)})", operation="reset")
    return (off, on)


def link(body: dict[str, Any], *keys: str) -> str | None:
    cur: Any = body
    for k in keys:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(k)
    if isinstance(cur, dict):
        cur = cur.get("@odata.id")
    return cur if isinstance(cur, str) else None


def members(body: dict[str, Any]) -> list[str]:
    out = []
    for m in body.get("Members") or []:
        if isinstance(m, dict) and isinstance(m.get("@odata.id"), str):
            out.append(m["@odata.id"])
    return out

