"""Pure decisions of the Redfish driver: which virtual media slots to use, which ResetTypes to
send, how a VirtualMedia body is read, and which quirks apply."""

from __future__ import annotations

import pytest

from edgefleet.errors import BmcError
from edgefleet.redfish import QUIRKS, MediaSlot, choose_reset, choose_slots, quirks_for
from edgefleet.redfish.driver import parse_media_slot
from edgefleet.redfish.quirks import GENERIC, SUSHY_EMULATOR


def slot(sid: str, *types: str, inserted: bool = False) -> MediaSlot:
    p = f"/redfish/v1/Managers/1/VirtualMedia/{sid}"
    return MediaSlot(path=p, id=sid, media_types=frozenset(types), inserted=inserted, image=None,
                     insert_target=f"{p}/Actions/VirtualMedia.InsertMedia",
                     eject_target=f"{p}/Actions/VirtualMedia.EjectMedia")


def test_sushy_shape_cd_and_floppy() -> None:
    plan = choose_slots([slot("Cd", "CD", "DVD"), slot("Floppy", "Floppy", "USBStick")])
    assert (plan.boot.id, plan.seed.id) == ("Cd", "Floppy")


def test_two_cds_preferred_over_usb_for_the_seed() -> None:
    plan = choose_slots([slot("USB", "USBStick"), slot("CD1", "CD"), slot("CD2", "DVD")])
    assert (plan.boot.id, plan.seed.id) == ("CD1", "CD2")


def test_single_slot_is_refused_with_the_fallback() -> None:
    with pytest.raises(BmcError) as ei:
        choose_slots([slot("CD", "CD", "DVD")], bmc="cp-1")
    e = ei.value
    assert e.bmc == "cp-1" and not e.transient and "talos-api" in str(e) and "single" in str(e)


def test_no_cd_slot() -> None:
    with pytest.raises(BmcError, match=r"no CD/DVD virtual media slot .*USB \['USBStick'\]"):
        choose_slots([slot("USB", "USBStick"), slot("F", "Floppy")])
    with pytest.raises(BmcError, match="slots: none"):
        choose_slots([])


@pytest.mark.parametrize("allowed, expect", [
    (["On", "ForceOff", "ForceRestart", "Nmi"], ("ForceRestart",)),
    (["On", "ForceOff", "GracefulShutdown"], ("ForceOff", "On")),
    (["ForceOn", "GracefulShutdown"], ("GracefulShutdown", "ForceOn")),
    (None, ("ForceRestart",)),
])
def test_reset_choice(allowed: list[str] | None, expect: tuple[str, ...]) -> None:
    assert choose_reset(allowed, GENERIC) == expect


def test_reset_quirk_removes_advertised_type() -> None:
    from dataclasses import replace

    q = replace(GENERIC, unsupported_reset_types=frozenset({"ForceRestart"}))
    assert choose_reset(["ForceRestart", "ForceOff", "On"], q) == ("ForceOff", "On")
    with pytest.raises(BmcError, match="no usable ResetType"):
        choose_reset(["Nmi", "PushPowerButton"], GENERIC)


def test_parse_media_slot() -> None:
    body = {"@odata.id": "/redfish/v1/Systems/1/VirtualMedia/Cd", "Id": "Cd", "MediaTypes": ["CD", "DVD", 3],
            "Inserted": True, "Image": "http://x/boot.iso",
            "Actions": {"#VirtualMedia.InsertMedia": {"target": "/i"}, "#VirtualMedia.EjectMedia": {}}}
    s = parse_media_slot(body)
    assert s.media_types == {"CD", "DVD"} and s.inserted and s.image == "http://x/boot.iso"
    assert s.insert_target == "/i" and s.eject_target is None and s.is_cd and not s.is_removable
    empty = parse_media_slot({"Id": "F", "Image": "", "Actions": "junk"})
    assert empty.image is None and not empty.inserted and empty.insert_target is None


def test_quirks_lookup() -> None:
    assert quirks_for("Sushy-Emulator") is SUSHY_EMULATOR
    assert quirks_for(None, "Sushy Emulator") is SUSHY_EMULATOR
    assert quirks_for("unknown-vendor", "Acme") is GENERIC
    assert quirks_for(None) is GENERIC


def test_every_quirk_entry_carries_notes() -> None:
    for q in QUIRKS.values():
        assert q.notes, f"{q.name} has no notes"
        assert q.power_transition_s > 0 and q.insert_media_read_timeout_s > 0


def test_public_api_is_exported() -> None:
    import edgefleet.health as health
    import edgefleet.redfish as redfish

    for mod in (redfish, health):
        assert sorted(mod.__all__) == sorted(set(mod.__all__))
        for name in mod.__all__:
            assert getattr(mod, name) is not None, name


class _Reply:
    def __init__(self, body: dict[str, object]):
        self.body = body


class _Conn409:
    """A BMC whose InsertMedia answers 409 (slot taken) and whose slot holds ``held``."""

    bmc = "cp-1"

    def __init__(self, held: str | None):
        self.held = held

    async def post(self, path: str, body: object, op: str, **kw: object) -> _Reply:
        raise BmcError("HTTP 409: media already inserted", bmc=self.bmc, operation=op, status=409)

    async def get(self, path: str, op: str, **kw: object) -> _Reply:
        return _Reply({"@odata.id": path, "Id": "Cd", "MediaTypes": ["CD"], "Inserted": self.held is not None,
                       "Image": self.held or ""})


@pytest.mark.parametrize("held, ok", [("http://seeds/t1/release.iso", True), ("http://seeds/OLD/release.iso", False),
                                      (None, False)])
def test_insert_media_409_is_done_only_when_the_slot_holds_this_very_url(held: str | None, ok: bool) -> None:
    import asyncio

    from edgefleet.redfish.driver import RedfishDriver

    drv = RedfishDriver(_Conn409(held))  # type: ignore[arg-type]
    call = drv.insert_media(slot("Cd", "CD"), "http://seeds/t1/release.iso")
    if ok:  # an earlier attempt the connector gave up on landed: the insert is done
        asyncio.run(call)
    else:
        with pytest.raises(BmcError, match="409"):
            asyncio.run(call)


def test_the_rollout_engine_runs_the_one_reimage_sequence() -> None:
    """The engine reimages through ``reimage_sequence`` (what the sushy-tools conformance test runs),
    guarding the window through its ``before_step`` hook; it sends none of the sequence's steps
    itself (only the eject after the node is up, which is not part of the sequence). The engine's
    Redfish reimager calls it; no module of the engine sends a step of its own."""
    import ast
    import importlib
    import inspect
    import pkgutil

    import edgefleet.rollout as rollout

    steps = {"choose_slots", "media_slots", "insert_media", "eject_media", "set_boot_once_cd", "reset", "wait_power"}
    names = [m.name for m in pkgutil.walk_packages(rollout.__path__, "edgefleet.rollout.")]
    assert "edgefleet.rollout.executor" in names and "edgefleet.rollout.reimage.redfish" in names
    calls: dict[str, set[str]] = {}
    for name in names:
        tree = ast.parse(inspect.getsource(importlib.import_module(name)))
        calls[name] = {n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
                       for n in ast.walk(tree) if isinstance(n, ast.Call)}
        assert not calls[name] & steps, (name, sorted(calls[name] & steps))
    assert "reimage_sequence" in calls["edgefleet.rollout.reimage.redfish"]
