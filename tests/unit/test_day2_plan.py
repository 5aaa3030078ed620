"""The pure parts of day-2 node operations: etcd's removal rule, the drain's retry bounds."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.day2.drain import DrainPolicy, drain_node
from edgefleet.day2.plan import member_may_go
from edgefleet.errors import DrainBlocked
from edgefleet.health.cluster import Eviction, PodRef


@given(st.dictionaries(st.sampled_from([f"cp{i}" for i in range(7)]), st.booleans(), min_size=1))
def test_member_may_go_keeps_a_started_quorum(roster: dict[str, bool]) -> None:
    for member in roster:
        rest = {n: up for n, up in roster.items() if n != member}
        ok = member_may_go(roster, member)
        assert ok == (sum(rest.values()) > len(rest) / 2)
        if not rest:
            assert not ok  # the last member never goes
        if all(rest.values()) and rest:
            assert ok  # with every other member up, any member may go


def test_member_may_go_examples() -> None:
    three = {"a": True, "b": True, "c": True}
    assert member_may_go(three, "a")
    assert not member_may_go({**three, "c": False}, "a")  # one down: a healthy one may not go
    assert member_may_go({**three, "c": False}, "c")  # the dead one may
    assert member_may_go({"a": True, "b": True}, "b")


class _Api:
    """A drain's Kubernetes calls answered from a script (the pure retry logic under test; the HTTP
    side is tested against the simulator)."""

    def __init__(self, answers: list[int]):
        self.answers = answers
        self.pods = [PodRef("shop", "web-1"), PodRef("shop", "exporter", daemonset=True)]
        self.calls: list[str] = []

    async def cordon(self, node: str) -> None:
        self.calls.append(f"cordon {node}")

    async def pods_on(self, node: str) -> list[PodRef]:
        return list(self.pods)

    async def evict(self, pod: PodRef) -> Eviction:
        self.calls.append(f"evict {pod.name}")
        code = self.answers.pop(0)
        if code == 429:
            return Eviction(code, "Cannot evict pod as it would violate the pod's disruption budget.", "web")
        self.pods.remove(pod)
        return Eviction(code)


def test_drain_backs_off_within_its_bounds_then_gives_up() -> None:
    waits: list[float] = []

    async def sleep(s: float) -> None:
        waits.append(s)

    api = _Api([429] * 6)
    with pytest.raises(DrainBlocked, match=r"pod shop/web-1 .*\(disruption budget web, refused 6 times over 30 s"):
        asyncio.run(drain_node(api, "dk-1", "dk-1-w1", policy=DrainPolicy(), sleep=sleep))
    assert waits == [1.0, 2.0, 4.0, 8.0, 15.0]
    assert api.calls.count("evict web-1") == 6 and "evict exporter" not in api.calls


def test_drain_succeeds_once_the_budget_allows() -> None:
    async def sleep(s: float) -> None:
        return None

    api = _Api([429, 429, 201])
    report = asyncio.run(drain_node(api, "dk-1", "dk-1-w1", policy=DrainPolicy(attempts=4), sleep=sleep))
    assert (report.evicted, report.left, report.refusals) == (["shop/web-1"], ["shop/exporter"], 2)
    assert api.calls[0] == "cordon dk-1-w1"
