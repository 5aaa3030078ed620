"""Release reach: the stores a release may be put on, given its place in the lifecycle.

Pure (no I/O; the caller reads the release's state from the catalog). The rule, whatever path
puts a release on stores (``rollout start``, ``provision``, a scheduled run, a train's stage):

- a ``stable`` release may reach every store;
- any other release (``built``, ``canary``) may reach only canary stores: ``canary: true`` in the
  inventory, ring ``canary``, or listed in ``canary_stores`` (a train passes its first stage's
  stores there);
- an operator may override the rule with a reason (``--force --reason TEXT``): the caller records
  an event ``release_forced`` naming the operator, the reason and the stores.

A rollback to a store's last known-good release is not subject to it: that release was stable once.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from edgefleet.errors import ReleaseInputError, ReleaseNotStable
from edgefleet.inventory.model import Fleet, Store

__all__ = ["NAMED_STORES", "check_reach", "is_canary_store", "outside_reach"]

NAMED_STORES = 5
"""How many of the refused stores a message names (the rest as a count)."""
_STABLE = "stable"


def is_canary_store(store: Store, canary_stores: Collection[str] = ()) -> bool:
    """Whether ``store`` is a canary store: ``canary: true``, in ring (or group) ``canary``, or
    listed in ``canary_stores``."""
    return store.id in canary_stores or store.ring == "canary" or "canary" in store.all_groups


def outside_reach(fleet: Fleet, state: str, stores: Iterable[str], *, canary_stores: Collection[str] = ()
                  ) -> list[str]:
    """The stores of ``stores`` a release in ``state`` may not reach (sorted, once each): none when
    the release is stable, else the non-canary ones. A store missing from the inventory counts as
    non-canary (the inventory says nothing that would allow it)."""
    if state == _STABLE:
        return []
    out = {s for s in stores if s not in fleet.stores and s not in canary_stores}
    out.update(s for s in stores if s in fleet.stores and not is_canary_store(fleet.stores[s], canary_stores))
    return sorted(out)


def check_reach(fleet: Fleet, release: str, state: str, stores: Iterable[str], *,
                canary_stores: Collection[str] = (), force_reason: str | None = None) -> None:
    """Raise ``ReleaseNotStable`` (exit 2) when ``release`` in ``state`` would reach a store outside
    its reach (see the module docstring), unless ``force_reason`` is given; a blank reason is bad
    input (``ReleaseInputError``)."""
    if force_reason is not None and not force_reason.strip():
        raise ReleaseInputError(f"forcing release {release} onto stores needs a reason: give --reason TEXT "
                                "(it is recorded in the event log)")
    outside = outside_reach(fleet, state, stores, canary_stores=canary_stores)
    if not outside or force_reason is not None:
        return
    named = ", ".join(outside[:NAMED_STORES])
    more = f" and {len(outside) - NAMED_STORES} more" if len(outside) > NAMED_STORES else ""
    raise ReleaseNotStable(
        f"release {release} is {state}, not stable: only canary stores may receive it, and this would put it "
        f"on {len(outside)} non-canary store{'s' if len(outside) != 1 else ''} ({named}{more}). Run a release "
        f"train (`edgefleet train start --release {release}`: its canary stage promotes the release to stable), "
        "limit this to canary stores, or override with `--force --reason TEXT` (recorded in the event log)",
        release=release, state=state, stores=tuple(outside))
