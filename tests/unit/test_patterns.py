"""Store selection by Ansible host pattern (edgefleet.inventory.patterns): the syntax on the sample
fleet, positions, and the errors for parts that match nothing. The comparison with Ansible's own
evaluation is in tests/contract/test_patterns_ansible.py."""

from __future__ import annotations

import pytest

from edgefleet.errors import InputError
from edgefleet.inventory.load import load_fleet
from edgefleet.inventory.model import Fleet
from edgefleet.inventory.patterns import select, split_pattern
from tests.helpers import SAMPLE_INVENTORY


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    """The sample fleet with dk-001 a canary (``canary: true``) in the custom group ``pilot-stores``,
    and dk-004 in it too."""
    base = load_fleet(SAMPLE_INVENTORY)
    stores = dict(base.stores)
    stores["dk-001"] = stores["dk-001"].model_copy(update={"canary": True, "groups": ["pilot-stores"]})
    stores["dk-004"] = stores["dk-004"].model_copy(update={"groups": ["pilot-stores"]})
    return base.model_copy(update={"stores": stores})


DK = ["dk-001", "dk-002", "dk-003", "dk-004", "dk-005"]


@pytest.mark.parametrize(("pattern", "expected"), [
    ("country_dk", DK),
    ("dk-003", ["dk-003"]),
    ("store_dk_003", ["dk-003"]),
    ("dk-003,no-001", ["dk-003", "no-001"]),
    ("no-001:dk-003", ["dk-003", "no-001"]),  # inventory order, whatever the pattern's
    (" dk-003 , no-001 ,", ["dk-003", "no-001"]),
    ("country_dk:&ring_ring2:!dk-003", ["dk-004", "dk-005"]),
    ("!dk-003:country_dk:&ring_ring2", ["dk-004", "dk-005"]),  # plain, then &, then !, as Ansible
    ("country_dk,&ring_ring2,!dk-003", ["dk-004", "dk-005"]),
    ("&country_dk:!ring_ring2", ["dk-001", "dk-002"]),  # no plain part: starts from all
    ("canary", ["dk-001"]),
    ("ring_canary", ["de-003", "dk-002", "us-002"]),
    ("canary:ring_canary", ["de-003", "dk-001", "dk-002", "us-002"]),
    ("pilot-stores", ["dk-001", "dk-004"]),
    ("pilot_stores", ["dk-001", "dk-004"]),  # as the Ansible export names it
    ("dk-*", DK),
    ("dk-00[1a]", ["dk-001"]),  # a glob's character class, not a position
    ("dk-00[!2-5]", ["dk-001"]),
    ("*:!country_dk:!country_us:!country_ca:!country_de", [
        "ae-001", "ae-002", "no-001", "no-002", "no-003", "pl-001", "pl-002", "pl-003", "vn-001", "vn-002"]),
    ("country_?k", DK),
    ("~(dk|no)-00[12]", ["dk-001", "dk-002", "no-001", "no-002"]),
    ("~country_(dk|no)$", [*DK, "no-001", "no-002", "no-003"]),
    ("!~.*-00[2-9]", ["ae-001", "ca-001", "de-001", "dk-001", "no-001", "pl-001", "us-001", "vn-001"]),
    ("store_dk_*", DK),
    ("region_nordics:&~.*-001", ["dk-001", "no-001"]),
    ("country_dk[0]", ["dk-001"]),
    ("country_dk[-1]", ["dk-005"]),
    ("country_dk[1:3]", ["dk-002", "dk-003", "dk-004"]),  # inclusive, as Ansible
    ("country_dk[3:]", ["dk-004", "dk-005"]),
    ("country_dk[2:2]", ["dk-003"]),
    ("dk-*[0]:no-*[0]", ["dk-001", "no-001"]),
    ("all:!country_dk[1:]", [s for s in load_fleet(SAMPLE_INVENTORY).stores if s not in DK[1:]]),
    ("ungrouped", []),  # Ansible's built-in group: no store is outside a group
    ("country_dk:&country_no", []),
])
def test_select(fleet: Fleet, pattern: str, expected: list[str]) -> None:
    assert select(fleet, pattern) == expected


def test_all_is_the_whole_fleet_in_inventory_order(fleet: Fleet) -> None:
    assert select(fleet, "all") == list(fleet.stores)
    assert select(fleet, "*") == list(fleet.stores)


@pytest.mark.parametrize(("pattern", "says"), [
    ("ring1", f"'ring1' in pattern 'ring1': no group or store 'ring1' in the inventory {SAMPLE_INVENTORY}; did you "
              "mean 'ring_ring1'?"),
    ("zz-9", f"'zz-9' in pattern 'zz-9': no group or store 'zz-9' in the inventory {SAMPLE_INVENTORY} (its stores: "
             "ae-001, ae-002, ca-001, ...; groups: canary, country_ae, pilot-stores, region_americas, ring_canary, "
             "...); check the name or the inventory path"),
    ("country_dk:&ring1:!dk-003", "did you mean 'ring_ring1'"),
    ("dk-03", "did you mean 'dk-003'"),
    ("contry_dk", "did you mean 'country_dk'"),
    ("dk", "did you mean 'country_dk'"),
    ("nowhere", "no group or store 'nowhere'"),
    ("!nowhere", "'!nowhere' in pattern '!nowhere'"),
    ("xx-*", "'xx-*' in pattern 'xx-*' matches no group or store"),
    ("~zz", "matches no group or store"),
    ("~(dk", "is not a valid regular expression"),
    ("dk-001,dk-002:&ring_ring1", "split at ',' only"),
    ("controlplane", "groups nodes by role"),
    ("worker:dk-001", "groups nodes by role"),
    ("country_dk[5]", "position 5 is out of range (5 stores match, positions 0 to 4)"),
    ("country_dk[-6]", "position -6 is out of range"),
    ("country_dk[7:]", "position 7 is out of range"),
    ("country_dk[3:1]", "ends before it starts"),
    ("country_dk[1-3]", "write country_dk[1:3]"),
    ("dk-00[13]", "(Ansible reads the [...] that ends 'dk-00[13]' as positions: to match characters there, "
                  "use a ~regex)"),
    ("", "empty store pattern"),
    (" , ", "empty store pattern"),
    ("country_dk:!", "must follow '!'"),
    ("&", "must follow '&'"),
])
def test_bad_patterns_name_the_part(fleet: Fleet, pattern: str, says: str) -> None:
    with pytest.raises(InputError) as e:
        select(fleet, pattern)
    assert says in str(e.value)
    assert e.value.exit_code == 2


@pytest.mark.parametrize(("pattern", "parts"), [
    ("a:b:&c:!d", ["a", "b", "&c", "!d"]),
    ("a,b:c", ["a", "b:c"]),
    ("a[1:2]:b", ["a[1:2]", "b"]),
    ("a, b ,,c", ["a", "b", "c"]),
    ("  ", []),
])
def test_split_like_ansible(pattern: str, parts: list[str]) -> None:
    assert split_pattern(pattern) == parts
