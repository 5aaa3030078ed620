"""The vendor quirks table: where a BMC's Redfish service departs from what the driver expects.

Pure data. One ``VendorQuirks`` per vendor; every quirk carries a NOTE saying which firmware shows it
and why the driver needs to know. Entries are added only from observation (a measured emulator or a
captured response), never from guesses. ``quirks_for`` picks an entry from the inventory's
``bmc.vendor`` or, failing that, from the System's ``Manufacturer``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GENERIC", "QUIRKS", "SUSHY_EMULATOR", "VendorQuirks", "quirks_for"]


@dataclass(frozen=True, slots=True)
class VendorQuirks:
    """How one vendor's Redfish service differs from the standard. Defaults are the standard."""

    name: str
    manufacturers: tuple[str, ...] = ()  # System.Manufacturer values that identify the vendor
    # The BMC accepts BootSourceOverrideEnabled=Once but reads it back as something else, so the
    # driver checks only the target after a PATCH.
    boot_override_enabled_unreliable: bool = False
    # Reset types the BMC rejects even if it advertises them (or advertises nothing).
    unsupported_reset_types: frozenset[str] = frozenset()
    # InsertMedia answers only after the BMC has fetched the whole image: the call needs a read
    # timeout sized for a download, not for a JSON answer.
    insert_media_downloads: bool = False
    insert_media_read_timeout_s: float = 30.0
    # Power transitions land this long after the Reset action returns (upper bound seen).
    power_transition_s: float = 60.0
    notes: tuple[str, ...] = ()


GENERIC = VendorQuirks(name="generic", notes=("the Redfish standard as written; no known departures",))

SUSHY_EMULATOR = VendorQuirks(
    name="sushy-emulator",
    manufacturers=("Sushy Emulator",),
    # NOTE(sushy-tools 2.2, fake and libvirt drivers): PATCH Boot ignores BootSourceOverrideEnabled
    # ("In libvirt we always set the boot device frequency to continuous") and always reads back
    # Continuous; the target (Cd) is honoured.
    boot_override_enabled_unreliable=True,
    # NOTE(sushy-tools 2.2): ResetType PowerCycle is not in the allowable values and answers 501;
    # the driver uses ForceRestart, or ForceOff then On.
    unsupported_reset_types=frozenset({"PowerCycle"}),
    # NOTE(sushy-tools 2.2): InsertMedia downloads the image with requests before it answers 204
    # (a missing image is a 400, a refused connection a 500).
    insert_media_downloads=True,
    insert_media_read_timeout_s=300.0,
    # NOTE(sushy-tools 2.2, fake driver): power changes are applied 1-11 s after the action.
    power_transition_s=30.0,
    notes=(
        # NOTE(sushy-tools 2.2): a request with a body but without Content-Type: application/json is
        # refused with 415; the connector always sends the header with a body, so nothing to switch.
        "415 without Content-Type: application/json (the connector always sends it)",
        # NOTE(sushy-tools 2.2): no SessionService; authentication is basic auth from an htpasswd
        # file. The connector's auto mode falls back to basic auth.
        "no SessionService: basic auth only",
        # NOTE(sushy-tools 2.2): VirtualMedia is listed under Systems/{id}; the Manager links to the
        # same collection. Two slots: Cd (CD, DVD) and Floppy (Floppy, USBStick).
        "VirtualMedia under Systems; slots Cd and Floppy/USBStick",
        # NOTE(sushy-tools 2.2): no ETag headers; PATCH goes without If-Match.
        "no ETags",
    ),
)

QUIRKS: dict[str, VendorQuirks] = {q.name: q for q in (GENERIC, SUSHY_EMULATOR)}


def quirks_for(vendor: str | None, manufacturer: str | None = None) -> VendorQuirks:
    """The quirks for an inventory ``bmc.vendor`` (exact table key, case-insensitive), else for a
    System ``Manufacturer``, else ``GENERIC``."""
    if vendor:
        q = QUIRKS.get(vendor.strip().lower())
        if q is not None:
            return q
    if manufacturer:
        for q in QUIRKS.values():
            if manufacturer.strip() in q.manufacturers:
                return q
    return GENERIC
