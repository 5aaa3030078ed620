"""Redfish operations on one node's BMC, and the reimage sequence built from them.

Everything goes through a ``Connector`` (the one owner of BMC HTTP); this module only decides what
to ask. Resources are found by following ``@odata.id`` links from the service root, never by
hard-coded paths: VirtualMedia lives under the System on some BMCs and under the Manager on others,
so both are searched.

Virtual media slots: the boot image goes in a CD/DVD slot and the node's NoCloud seed in a second
slot (another CD/DVD, or a USB stick / removable slot). A BMC with a single slot cannot present both
at once; the driver refuses with a ``BmcError`` telling the user to switch the store to
``wipe_method: talos-api`` (in-band reset with the seed served over the network). Choosing slots is
the pure function ``choose_slots`` (in ``edgefleet.redfish.resources``, with the other pure choices).

Power: after ``ForceRestart`` a BMC may still read ``On`` before the restart takes effect (sushy's
fake driver goes ``Off`` at once, real firmware varies), so "power is On" after a reset proves only
that the node is powered, not that it rebooted; proving the new release booted is the health
probes' job.

Reads are retried, actions are not blindly repeated: a read (the System, its power state, virtual
media, the service root) that fails transiently is read again until ``read_deadline_s`` (the
sequence sets it to its power deadline once it has acted on the node: a 500 on a power-state GET
says nothing about the node, and giving up then costs a rollback; its discovery reads, before any
action, fail fast), while wait loops (``wait_power``) read through transient failures until their
own deadline. An
action (InsertMedia, the boot override PATCH, a reset) is left to the connector's rule: repeated
only when it cannot have been applied, else it fails the step.

``reimage_sequence`` = eject stale media, insert boot image + seed, one-time boot from CD, reset,
wait until the power is On. It is the one implementation of the sequence: the rollout engine runs
it (with a ``before_step`` hook that re-checks the maintenance window before each step the store
would notice) and the sushy-tools conformance test runs it. Waiting for the node to be healthy is
the orchestrator's job, and so is calling ``eject_reimage_media`` once the node has installed
itself (ejecting earlier would pull the installer's medium from under it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from edgefleet.errors import BmcError
from edgefleet.redfish.connector import Connector, RedfishResponse
from edgefleet.redfish.quirks import GENERIC, VendorQuirks, quirks_for
from edgefleet.redfish.resources import (
    MediaSlot,
    PowerState,
    SlotPlan,
    choose_reset,
    choose_slots,
    parse_media_slot,
)
from edgefleet.redfish.resources import link as _link
from edgefleet.redfish.resources import members as _members
from edgefleet.retry import RetryPolicy, retrying

__all__ = [
    "MediaSlot",
    "PowerState",
    "RedfishDriver",
    "ReimageResult",
    "ReimageStep",
    "SlotPlan",
    "choose_reset",
    "choose_slots",
    "eject_reimage_media",
    "reimage_sequence",
]

log = logging.getLogger("edgefleet.redfish")

T = TypeVar("T")



@dataclass
class RedfishDriver:
    """Operations on one BMC's computer system. ``system_id`` picks a System when the BMC has more
    than one (by ``Id`` or ``Name``); otherwise the first is used."""

    conn: Connector
    vendor: str | None = None  # the inventory's bmc.vendor
    system_id: str | None = None
    poll_interval_s: float = 1.0
    # how long a read is retried after transient failures (None: the connector's attempts only)
    read_deadline_s: float | None = None
    quirks: VendorQuirks = field(default=GENERIC, init=False)
    _system: str | None = field(default=None, init=False, repr=False)
    _system_body: dict[str, Any] | None = field(default=None, init=False, repr=False)
    _slot_paths: list[str] | None = field(default=None, init=False, repr=False)  # found once per driver

    @property
    def bmc(self) -> str:
        return self.conn.bmc

    def _err(self, message: str, operation: str, *, transient: bool = False) -> BmcError:
        return BmcError(message, bmc=self.bmc, operation=operation, transient=transient)

    def _read_policy(self, deadline_s: float) -> RetryPolicy:
        return RetryPolicy(attempts=None, backoff_s=self.poll_interval_s, backoff_max_s=4 * self.poll_interval_s,
                           deadline_s=max(0.0, deadline_s))

    async def _read(self, read: Callable[[], Awaitable[T]], deadline_s: float | None = None) -> T:
        """An idempotent read, read again after a transient failure until ``deadline_s`` (default
        ``read_deadline_s``; None: once, the connector's own attempts only)."""
        limit = self.read_deadline_s if deadline_s is None else deadline_s
        if limit is None:
            return await read()
        return await retrying(self._read_policy(limit), read)

    async def _get(self, path: str, operation: str) -> RedfishResponse:
        return await self._read(lambda: self.conn.get(path, operation))

    async def _root(self, operation: str) -> dict[str, Any]:
        return await self._read(lambda: self.conn.service_root(operation))

    # -- discovery -----------------------------------------------------------------------------

    async def system_path(self) -> str:
        """The @odata.id of the node's ComputerSystem, discovered from the service root."""
        if self._system is not None:
            return self._system
        op = "find the system"
        root = await self._root(op)
        systems = _link(root, "Systems")
        if systems is None:
            raise self._err("the service root has no Systems link", op)
        members = _members((await self._get(systems, op)).body)
        if not members:
            raise self._err(f"{systems} lists no systems", op)
        chosen: str | None = None
        body: dict[str, Any] | None = None
        if self.system_id is None:
            chosen = members[0]
        else:
            for m in members:
                b = (await self._get(m, op)).body
                if self.system_id in (b.get("Id"), b.get("Name"), b.get("UUID")):
                    chosen, body = m, b
                    break
            if chosen is None:
                raise self._err(f"no system with Id/Name {self.system_id!r} among {len(members)}", op)
        if body is None:
            body = (await self._get(chosen, op)).body
        self._system, self._system_body = chosen, body
        manufacturer = body.get("Manufacturer")
        self.quirks = quirks_for(self.vendor, manufacturer if isinstance(manufacturer, str) else None)
        return chosen

    async def system(self, operation: str = "read the system") -> dict[str, Any]:
        """A fresh read of the ComputerSystem resource."""
        path = await self.system_path()
        body = (await self._get(path, operation)).body
        self._system_body = body
        return body

    async def media_slots(self) -> list[MediaSlot]:
        """Every VirtualMedia slot of the node: the System's collection and its Managers'
        collections (ManagedBy links, else every Manager), deduplicated by @odata.id. The slots'
        paths are found once per driver (a node's reimage and its eject); their state is read
        afresh on every call."""
        op = "list virtual media"
        if self._slot_paths is not None:
            return [await self._read_slot(member, op) for member in self._slot_paths]
        sys_path = await self.system_path()
        sysbody = self._system_body or {}
        collections: list[str] = []
        own = _link(sysbody, "VirtualMedia")
        if own:
            collections.append(own)
        managers = [m["@odata.id"] for m in (sysbody.get("Links") or {}).get("ManagedBy") or []
                    if isinstance(m, dict) and isinstance(m.get("@odata.id"), str)]
        if not managers:
            root = await self._root(op)
            mlink = _link(root, "Managers")
            if mlink:
                managers = _members((await self._get(mlink, op)).body)
        for m in managers:
            vm = _link((await self._get(m, op)).body, "VirtualMedia")
            if vm and vm not in collections:
                collections.append(vm)
        if not collections:
            raise self._err(f"neither {sys_path} nor its managers link a VirtualMedia collection", op)
        seen: dict[str, None] = {}
        for c in collections:
            for member in _members((await self._get(c, op)).body):
                seen.setdefault(member)
        slots = [await self._read_slot(member, op) for member in seen]
        self._slot_paths = list(seen)
        return slots

    async def _read_slot(self, member: str, op: str) -> MediaSlot:
        slot = parse_media_slot((await self._get(member, op)).body)
        return slot if slot.path else MediaSlot(member, slot.id, slot.media_types, slot.inserted, slot.image,
                                                slot.insert_target, slot.eject_target)

    # -- power --------------------------------------------------------------------------------

    async def power_state(self) -> PowerState:
        return self._power_of(await self.system("get power state"))

    async def _power_now(self) -> PowerState:
        """One power-state read (the connector's attempts only): ``wait_power`` decides how long
        to read again."""
        body = (await self.conn.get(await self.system_path(), "get power state")).body
        self._system_body = body
        return self._power_of(body)

    def _power_of(self, body: dict[str, Any]) -> PowerState:
        value = body.get("PowerState")
        try:
            return PowerState(str(value))
        except ValueError:
            raise self._err(f"unknown PowerState {value!r}", "get power state") from None

    async def wait_power(self, want: PowerState, deadline_s: float | None = None) -> float:
        """Poll until the power state is ``want``; returns the seconds waited. A read failing
        transiently is read again within the deadline (default: the vendor's power transition
        time); at the deadline a transient ``BmcError`` (the last read's failure, or the state)."""
        limit = deadline_s if deadline_s is not None else self.quirks.power_transition_s
        start = time.monotonic()
        last: PowerState | None = None
        while True:
            # Read through transient failures until the wait's own deadline.
            last = await self._read(self._power_now, deadline_s=limit - (time.monotonic() - start))
            waited = time.monotonic() - start
            if last is want:
                return waited
            if waited + self.poll_interval_s > limit:
                raise self._err(f"power still {last} after {waited:.1f} s, wanted {want} within {limit:g} s",
                                f"wait for power {want}", transient=True)
            await asyncio.sleep(self.poll_interval_s)

    async def reset(self, deadline_s: float | None = None, *, system: dict[str, Any] | None = None) -> tuple[str, ...]:
        """Restart the node (or power it on when it is off). ``ForceRestart`` when the BMC allows
        it, else ``ForceOff``, wait for Off, ``On``. Returns the ResetTypes sent. ``system``: a
        ComputerSystem body the caller read (or got back from a PATCH) just before; without it the
        System is read now."""
        op = "reset"
        body = system if system is not None else await self.system(op)
        action = (body.get("Actions") or {}).get("#ComputerSystem.Reset")
        if not isinstance(action, dict) or not isinstance(action.get("target"), str):
            raise self._err("the system has no #ComputerSystem.Reset action", op)
        target: str = action["target"]
        allowed = action.get("ResetType@Redfish.AllowableValues")
        allowed_list = [a for a in allowed if isinstance(a, str)] if isinstance(allowed, list) else None
        if body.get("PowerState") == PowerState.off:
            ok = set(allowed_list) if allowed_list is not None else {"On"}
            kind = "On" if "On" in ok else "ForceOn" if "ForceOn" in ok else None
            if kind is None:
                raise self._err(f"the node is off and the BMC allows no On/ForceOn (allowed: {sorted(ok)})", op)
            await self.conn.post(target, {"ResetType": kind}, op)
            return (kind,)
        try:
            plan = choose_reset(allowed_list, self.quirks)
        except BmcError as e:
            raise self._err(str(e), op) from None
        if len(plan) == 1:
            await self.conn.post(target, {"ResetType": plan[0]}, op)
            return plan
        off, on = plan
        await self.conn.post(target, {"ResetType": off}, op)
        await self.wait_power(PowerState.off, deadline_s)
        await self.conn.post(target, {"ResetType": on}, op)
        return plan

    # -- boot ---------------------------------------------------------------------------------

    async def set_boot_once_cd(self) -> dict[str, Any]:
        """One-time boot override to the virtual CD (``BootSourceOverrideTarget: Cd``,
        ``BootSourceOverrideEnabled: Once``), with If-Match when the BMC gives an ETag, verified by
        reading it back. Returns the ComputerSystem as read back.

        The read-back is the PATCH response when the BMC answers 200 with the resource (Redfish
        lets a PATCH return the updated representation; the simulator and most firmware do), else
        a GET (sushy-tools answers 204)."""
        op = "set one-time boot from CD"
        path = await self.system_path()
        current = await self._get(path, op)
        boot = current.body.get("Boot") or {}
        allowed = boot.get("BootSourceOverrideTarget@Redfish.AllowableValues")
        if isinstance(allowed, list) and "Cd" not in allowed:
            raise self._err(f"the BMC does not offer boot target Cd (allowed: {allowed})", op)
        patch = {"Boot": {"BootSourceOverrideTarget": "Cd", "BootSourceOverrideEnabled": "Once"}}
        try:
            resp = await self.conn.patch(path, patch, op, etag=current.etag)
        except BmcError as e:
            if e.status != 412:
                raise
            fresh = await self._get(path, op)  # someone changed it between read and write
            resp = await self.conn.patch(path, patch, op, etag=fresh.etag)
        if resp.status == 200 and isinstance(resp.body.get("Boot"), dict):
            body = self._system_body = resp.body
        else:
            body = await self.system(op)
        after = body.get("Boot") or {}
        if after.get("BootSourceOverrideTarget") != "Cd":
            raise self._err(f"boot override reads back target {after.get('BootSourceOverrideTarget')!r}, "
                            "not 'Cd'", op)
        enabled = after.get("BootSourceOverrideEnabled")
        if enabled != "Once" and not self.quirks.boot_override_enabled_unreliable:
            raise self._err(f"boot override reads back enabled {enabled!r}, not 'Once'", op)
        return body

    # -- virtual media --------------------------------------------------------------------------

    async def insert_media(self, slot: MediaSlot, image_url: str) -> None:
        op = f"insert media into {slot.id}"
        target = slot.insert_target or f"{slot.path}/Actions/VirtualMedia.InsertMedia"
        try:
            await self.conn.post(target, {"Image": image_url, "Inserted": True, "WriteProtected": True}, op,
                                 idempotent=True, read_timeout_s=self.quirks.insert_media_read_timeout_s)
        except BmcError as e:
            # A BMC that downloads before answering may finish an attempt the connector gave up on
            # (read timeout) and repeated: the repeat then finds the slot taken (409). Taken by
            # this very URL (unique to this reimage) means the insert is done.
            if e.status != 409:
                raise
            held = parse_media_slot((await self._get(slot.path, op)).body)
            if not (held.inserted and held.image == image_url):
                raise
            log.info("BMC %s: %s already holds this image (an earlier attempt landed)", self.bmc, slot.id)
            return
        after = parse_media_slot((await self._get(slot.path, op)).body)
        if not after.inserted:
            raise self._err("InsertMedia returned success but the slot reads back not inserted", op)

    async def eject_media(self, slot: MediaSlot) -> None:
        op = f"eject media from {slot.id}"
        target = slot.eject_target or f"{slot.path}/Actions/VirtualMedia.EjectMedia"
        await self.conn.post(target, {}, op, idempotent=True)


@dataclass(frozen=True, slots=True)
class ReimageResult:
    """What ``reimage_sequence`` did, with timings in seconds."""

    bmc: str
    boot_slot: str
    seed_slot: str
    reset_types: tuple[str, ...]
    ejected_before: tuple[str, ...]
    insert_s: float
    power_wait_s: float
    total_s: float


class ReimageStep(StrEnum):
    """The steps of ``reimage_sequence`` a store notices, in order (``before_step`` is awaited
    before each; ejecting stale media and waiting for the power are not among them)."""

    insert_boot = "insert_boot"
    insert_seed = "insert_seed"
    boot_override = "boot_override"
    reset = "reset"


async def _no_guard(step: ReimageStep) -> None:
    del step


async def reimage_sequence(driver: RedfishDriver, boot_image_url: str, seed_url: str, *,
                           power_deadline_s: float | None = None,
                           before_step: Callable[[ReimageStep], Awaitable[None]] | None = None) -> ReimageResult:
    """Insert the boot image (CD slot) and the seed (second slot), set a one-time boot from CD,
    reset, and wait until the power is On. Stale media in either slot is ejected first.

    ``before_step(step)`` is awaited before each ``ReimageStep``; it stops the sequence by raising
    (the rollout engine raises when the maintenance window would close before the step: a slow
    BMC must not push the reset past the window's end). What was done until then stays done: the
    caller ejects the media when it gives up on the node."""
    guard = before_step or _no_guard
    start = time.monotonic()
    # Discovery, before anything is done to the node: the connector's attempts only (a BMC that
    # does not answer fails fast, nothing to undo).
    plan = choose_slots(await driver.media_slots(), bmc=driver.bmc)
    if driver.read_deadline_s is not None:
        return await _act(driver, plan, boot_image_url, seed_url, guard, power_deadline_s, start)
    # From the first action on, reads get the step's deadline: a run of 500s on a GET while the
    # node is fine must not fail (and roll back) its reimage.
    driver.read_deadline_s = power_deadline_s if power_deadline_s is not None else driver.quirks.power_transition_s
    try:
        return await _act(driver, plan, boot_image_url, seed_url, guard, power_deadline_s, start)
    finally:
        driver.read_deadline_s = None


async def _act(driver: RedfishDriver, plan: SlotPlan, boot_image_url: str, seed_url: str,
               guard: Callable[[ReimageStep], Awaitable[None]], power_deadline_s: float | None,
               start: float) -> ReimageResult:
    ejected = []
    for slot in (plan.boot, plan.seed):
        if slot.inserted:
            await driver.eject_media(slot)
            ejected.append(slot.id)
    t0 = time.monotonic()
    await guard(ReimageStep.insert_boot)
    await driver.insert_media(plan.boot, boot_image_url)
    await guard(ReimageStep.insert_seed)
    await driver.insert_media(plan.seed, seed_url)
    insert_s = time.monotonic() - t0
    await guard(ReimageStep.boot_override)
    system = await driver.set_boot_once_cd()
    await guard(ReimageStep.reset)
    # The body just read back (one request ago) carries PowerState and the Reset action: no
    # second read before the reset.
    reset_types = await driver.reset(power_deadline_s, system=system)
    waited = await driver.wait_power(PowerState.on, power_deadline_s)
    log.info("BMC %s: reimage started (boot %s, seed %s, reset %s)", driver.bmc, plan.boot.id, plan.seed.id,
             "+".join(reset_types))
    return ReimageResult(bmc=driver.bmc, boot_slot=plan.boot.id, seed_slot=plan.seed.id,
                         reset_types=reset_types, ejected_before=tuple(ejected), insert_s=insert_s,
                         power_wait_s=waited, total_s=time.monotonic() - start)


async def eject_reimage_media(driver: RedfishDriver) -> tuple[str, ...]:
    """Eject whatever is inserted in any virtual media slot; returns the slot ids ejected. Call it
    after the node has installed itself and is healthy."""
    out = []
    for slot in await driver.media_slots():
        if slot.inserted:
            await driver.eject_media(slot)
            out.append(slot.id)
    return tuple(out)
