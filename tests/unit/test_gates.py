"""Gate verdicts: node, rollback node, control-plane quorum, store (with soak), wave budget."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.errors import KubeApiStatusError, KubeApiUnreachable, KubeCredentialsRefused
from edgefleet.health.probes import ClusterSnapshot, NodeStatus, ProbeResult
from edgefleet.inventory.model import Store
from edgefleet.rollout.gates import (
    RELEASE_LABEL,
    NodeBefore,
    VerdictKind,
    WaveDecision,
    evaluate_node,
    evaluate_quorum,
    evaluate_rollback_node,
    evaluate_store,
    evaluate_wave,
    repair_order,
)

NOW = datetime(2026, 11, 3, 22, 0, tzinfo=UTC)


def _store(roles: list[str]) -> Store:
    return Store.model_validate({
        "id": "s1", "name": "S1", "country": "DK", "region": "nordics", "timezone": "Europe/Copenhagen",
        "maintenance_windows": [{"days": ["daily"], "start": "22:00", "end": "05:00"}],
        "network": {"subnet": "10.1.0.0/24", "gateway": "10.1.0.1", "dns": ["10.0.0.53"]},
        "cluster": {"name": "s1"},
        "nodes": [{"name": f"n{i + 1}", "role": r, "mac": f"02:00:00:00:00:{i + 1:02x}", "ip": f"10.1.0.{10 + i}"}
                  for i, r in enumerate(roles)]})


def _node(name: str, *, ready: bool = True, release: str = "v2", talos: str = "v1.12.6",
          cp: bool = False) -> NodeStatus:
    labels = [(RELEASE_LABEL, release)]
    if cp:
        labels.append(("node-role.kubernetes.io/control-plane", ""))
    return NodeStatus(name, ready, "KubeletReady" if ready else "KubeletNotReady booting", f"Talos ({talos})",
                      "v1.35.0", tuple(sorted(labels)))


def _snap(*nodes: NodeStatus, readyz: bool = True) -> ClusterSnapshot:
    return ClusterSnapshot("http://k8s", readyz, "HTTP 200: ok" if readyz else "HTTP 503", nodes)


def test_node_gate_needs_ready_label_and_version() -> None:
    assert evaluate_node(_snap(_node("n1")), "n1", "v2", "v1.12.6").passed
    v = evaluate_node(_snap(_node("n1", release="v1")), "n1", "v2", "v1.12.6")
    assert v.kind is VerdictKind.pending and "expected 'v2'" in v.why()
    assert "expected Talos v1.12.7" in evaluate_node(_snap(_node("n1")), "n1", "v2", "v1.12.7").why()
    assert "NotReady" in evaluate_node(_snap(_node("n1", ready=False)), "n1", "v2", None).why()
    assert "not registered" in evaluate_node(_snap(_node("n2")), "n1", "v2", None).why()
    assert evaluate_node(None, "n1", "v2", None).kind is VerdictKind.pending


def test_rollback_gate_excuses_only_nodes_that_were_not_ready_before() -> None:
    snap = _snap(_node("n1", ready=False, release="v1"))
    assert evaluate_rollback_node(snap, "n1", "v1", NodeBefore("v1", False), None).passed
    assert not evaluate_rollback_node(snap, "n1", "v1", NodeBefore("v1", True), None).passed
    assert not evaluate_rollback_node(_snap(_node("n1", ready=False, release="v2")), "n1", "v1",
                                      NodeBefore("v1", False), None).passed


def test_quorum_gate() -> None:
    store = _store(["controlplane"] * 3 + ["worker"])
    ok = _snap(_node("n1", cp=True), _node("n2", cp=True), _node("n3", cp=True), _node("n4", ready=False))
    assert evaluate_quorum(store, ok, "n1", ["n1", "n2", "n3"]).passed
    assert evaluate_quorum(store, ok, "n1", None).passed  # no Talos API: Kubernetes readiness only
    v = evaluate_quorum(store, ok, "n1", ["n1", "n2"])
    assert not v.passed and "n3 is not an etcd member" in v.why()
    down = _snap(_node("n1", cp=True), _node("n2", cp=True, ready=False), _node("n3", cp=True))
    assert "control plane n2 is not Ready" in evaluate_quorum(store, down, "n1", None).why()
    assert evaluate_quorum(store, down, "n2", None).passed  # n2 itself may be the one to fix
    assert evaluate_quorum(_store(["controlplane"]), None, "n1", None).passed  # one control plane: by design


def test_store_gate_with_probes_soak_and_excused_nodes() -> None:
    store = _store(["controlplane", "worker"])
    healthy = _snap(_node("n1", cp=True), _node("n2"))
    soak = timedelta(minutes=5)
    assert "soaking" in evaluate_store(store, healthy, "v2", (), healthy_since=None, now=NOW, soak=soak).why()
    assert not evaluate_store(store, healthy, "v2", (), healthy_since=NOW - timedelta(minutes=4), now=NOW,
                              soak=soak).passed
    assert evaluate_store(store, healthy, "v2", (), healthy_since=NOW - soak, now=NOW, soak=soak).passed
    bad_probe = ProbeResult("pos", "http://pos", False, 500, "HTTP 500, expected 200", 0.1)
    assert "probe pos" in evaluate_store(store, healthy, "v2", (bad_probe,), healthy_since=NOW, now=NOW,
                                         soak=timedelta(0)).why()
    assert "API server not ready" in evaluate_store(store, _snap(_node("n1", cp=True), _node("n2"), readyz=False),
                                                    "v2", (), healthy_since=NOW, now=NOW, soak=timedelta(0)).why()
    n2_down = _snap(_node("n1", cp=True), _node("n2", ready=False))
    assert not evaluate_store(store, n2_down, "v2", (), healthy_since=NOW, now=NOW, soak=timedelta(0)).passed
    assert evaluate_store(store, n2_down, "v2", (), healthy_since=NOW, now=NOW, soak=timedelta(0),
                          before={"n2": NodeBefore("v2", False)}).passed
    wrong = _snap(_node("n1", cp=True), _node("n2", release="v1"))
    assert "expected 'v2'" in evaluate_store(store, wrong, "v2", (), healthy_since=NOW, now=NOW,
                                             soak=timedelta(0)).why()


@pytest.mark.parametrize(("failed", "inconclusive", "budget", "decision"), [
    (0, 0, 0, WaveDecision.proceed), (1, 0, 1, WaveDecision.proceed), (2, 0, 1, WaveDecision.halt),
    (1, 0, 0, WaveDecision.halt), (0, 1, 1, WaveDecision.proceed), (1, 1, 1, WaveDecision.pause),
    (2, 1, 1, WaveDecision.halt), (0, 3, 5, WaveDecision.proceed)])
def test_wave_gate(failed: int, inconclusive: int, budget: int, decision: WaveDecision) -> None:
    assert evaluate_wave(failed, inconclusive, budget)[0] is decision


@given(st.integers(0, 50), st.integers(0, 50), st.integers(0, 50))
def test_wave_gate_properties(failed: int, inconclusive: int, budget: int) -> None:
    decision, why = evaluate_wave(failed, inconclusive, budget)
    assert (decision is WaveDecision.halt) == (failed > budget)  # exceeding halts, equalling does not
    if decision is WaveDecision.pause:
        assert inconclusive > 0 and failed + inconclusive > budget
    if failed + inconclusive <= budget:
        assert decision is WaveDecision.proceed
    assert str(budget) in why


def test_gates_say_why_the_api_could_not_be_read() -> None:
    """Refused credentials read as such, not as an API that does not answer; every gate is pending."""
    store = _store(["controlplane"] * 3)
    refused = KubeCredentialsRefused("HTTP 403 on /api/v1/nodes", endpoint="https://10.1.0.9:6443", store="s1",
                                     status=403)
    down = KubeApiUnreachable("no answer within 10 s", endpoint="https://10.1.0.9:6443", store="s1")
    odd = KubeApiStatusError("HTTP 404 on /api/v1/nodes", endpoint="https://10.1.0.9:6443", status=404)
    verdicts = {
        "node": lambda e: evaluate_node(e, "n1", "v2", None),
        "rollback": lambda e: evaluate_rollback_node(e, "n1", "v2", NodeBefore("v1", False), None),
        "quorum": lambda e: evaluate_quorum(store, e, "n1", None),
        "store": lambda e: evaluate_store(store, e, "v2", (), healthy_since=None, now=NOW, soak=timedelta(0)),
    }
    for name, gate in verdicts.items():
        v = gate(refused)
        assert v.kind is VerdictKind.pending, name
        assert "refused edgefleet's credentials" in v.why() and "HTTP 403" in v.why() and "not answer" not in v.why()
        assert "10.1.0.9" not in v.why() + gate(down).why() + gate(odd).why()  # no endpoint in the ledger
        assert "does not answer" in gate(down).why() and "no answer within 10 s" in gate(down).why()
        assert "cannot be read" in gate(odd).why() and "HTTP 404" in gate(odd).why()
        assert gate(None).why() == "the store's Kubernetes API does not answer"


def _cluster(n_cp: int, n_workers: int, broken: set[str], *, release: str = "v1",
             broken_release: str = "v2") -> tuple[Store, ClusterSnapshot]:
    """A store of ``n_cp`` control planes and ``n_workers`` workers on ``release``; the ``broken``
    ones NotReady on ``broken_release`` (as a failed forward step leaves them)."""
    store = _store(["controlplane"] * n_cp + ["worker"] * n_workers)
    nodes = [_node(n.name, ready=n.name not in broken, release=broken_release if n.name in broken else release,
                   cp=n.role.value == "controlplane") for n in store.nodes]
    return store, _snap(*nodes)


@pytest.mark.parametrize("n_cp", [3, 5])
def test_repair_starts_with_the_broken_control_plane_at_every_position(n_cp: int) -> None:
    for pos in range(1, n_cp + 1):
        bad = f"n{pos}"
        store, snap = _cluster(n_cp, 2, {bad})
        order = [n.name for n in repair_order(store, snap, "v1")]
        assert order[0] == bad, (pos, order)
        assert order[1:] == [f"n{i}" for i in range(1, n_cp + 3) if f"n{i}" != bad]  # then the rest, in order
        # The broken one is already down: its own repair is not blocked, by itself or by anything.
        members = [f"n{i}" for i in range(1, n_cp + 1) if i != pos]
        assert evaluate_quorum(store, snap, bad, members).passed
        assert evaluate_quorum(store, snap, bad, None).passed
        # Every healthy control plane waits until the broken one is back.
        for i in range(1, n_cp + 1):
            if i != pos:
                v = evaluate_quorum(store, snap, f"n{i}", members)
                assert not v.passed and f"control plane {bad} is not Ready" in v.why(), (pos, i)
        # Once it is back (Ready on v1, an etcd member), the next one may go.
        healed = _snap(*(_node(n.name, cp=n.role.value == "controlplane", release="v1") for n in store.nodes))
        others = [f"n{i}" for i in range(1, n_cp + 1) if i != pos]
        assert evaluate_quorum(store, healed, others[0], [f"n{i}" for i in range(1, n_cp + 1)]).passed


def test_repair_order_broken_workers_and_wrong_releases() -> None:
    store, snap = _cluster(3, 2, {"n5"})
    assert [n.name for n in repair_order(store, snap, "v1")] == ["n5", "n1", "n2", "n3", "n4"]
    # A Ready node on the wrong release counts as broken too; control planes first within a group.
    mixed = _snap(_node("n1", cp=True, release="v1"), _node("n2", cp=True, release="v2"),
                  _node("n3", cp=True, release="v1"), _node("n4", release="v2"), _node("n5", release="v1"))
    assert [n.name for n in repair_order(store, mixed, "v1")] == ["n2", "n4", "n1", "n3", "n5"]
    # NotReady before Ready-on-the-wrong-release: what a failed forward step leaves (n1 done on v2,
    # n2 broken on v2) is repaired from the broken one.
    failed_forward = _snap(_node("n1", cp=True, release="v2"), _node("n2", cp=True, release="v2", ready=False),
                           _node("n3", cp=True, release="v1"), _node("n4", release="v1"), _node("n5", release="v1"))
    assert [n.name for n in repair_order(store, failed_forward, "v1")] == ["n2", "n1", "n3", "n4", "n5"]
    # A forward rollout (nothing on the target yet) keeps the safe order: control planes, then workers.
    assert [n.name for n in repair_order(store, mixed, "v3")] == ["n1", "n2", "n3", "n4", "n5"]
    # The API cannot be read: inventory order, control planes first.
    assert [n.name for n in repair_order(store, None, "v1")] == ["n1", "n2", "n3", "n4", "n5"]


@pytest.mark.parametrize("n_cp", [3, 5])
def test_two_broken_control_planes_are_each_repairable(n_cp: int) -> None:
    for a in range(1, n_cp + 1):
        for b in range(a + 1, n_cp + 1):
            bad = {f"n{a}", f"n{b}"}
            store, snap = _cluster(n_cp, 1, bad)
            order = [n.name for n in repair_order(store, snap, "v1")]
            assert order[:2] == [f"n{a}", f"n{b}"], order
            members = [f"n{i}" for i in range(1, n_cp + 1) if f"n{i}" not in bad]
            for name in bad:  # neither blocks its own repair, nor the other's
                assert evaluate_quorum(store, snap, name, members).passed
            healthy = next(n for n in members)
            assert not evaluate_quorum(store, snap, healthy, members).passed


def test_a_member_that_is_ready_but_not_up_in_etcd_is_down() -> None:
    store = _store(["controlplane"] * 3)
    snap = _snap(_node("n1", cp=True), _node("n2", cp=True), _node("n3", cp=True))
    assert evaluate_quorum(store, snap, "n2", ["n1", "n3"]).passed  # n2 is not a member: already down
    v = evaluate_quorum(store, snap, "n1", ["n1", "n3"])
    assert not v.passed and "n2 is not an etcd member" in v.why()


def test_store_gate_soaking_is_a_verdict_kind() -> None:
    store = _store(["controlplane"])
    v = evaluate_store(store, _snap(_node("n1", cp=True)), "v2", (), healthy_since=None, now=NOW,
                       soak=timedelta(minutes=5))
    assert v.kind is VerdictKind.soaking and not v.passed
    v = evaluate_store(store, _snap(_node("n1", cp=True, ready=False)), "v2", (), healthy_since=None, now=NOW,
                       soak=timedelta(minutes=5))
    assert v.kind is VerdictKind.pending
    # A node that was NotReady before is excused its readiness, not its release.
    excused = {"n1": NodeBefore("v2", False)}
    assert evaluate_store(store, _snap(_node("n1", cp=True, ready=False)), "v2", (), healthy_since=NOW, now=NOW,
                          soak=timedelta(0), before=excused).passed
    assert not evaluate_store(store, _snap(_node("n1", cp=True, ready=False, release="v1")), "v2", (),
                              healthy_since=NOW, now=NOW, soak=timedelta(0), before=excused).passed


def test_a_resumed_run_takes_the_node_it_was_working_on_first() -> None:
    """Killed between n2's boot and its eject, with n3 not yet touched: repair order alone would take
    n3 first (not on the release), record n3's steps, and n2 (Ready on v2 by then) would be skipped
    with nothing naming it mid-reimage: its media would stay attached."""
    from edgefleet.rollout.states import Phase, Stage, Step
    from edgefleet.rollout.storerun import _resumed_first

    store = _store(["controlplane"] * 3)
    snap = _snap(_node("n1", cp=True, release="v2"), _node("n2", cp=True, release="v2"),
                 _node("n3", cp=True, release="v1"))
    order = repair_order(store, snap, "v2")
    assert order[0].name == "n3"
    resumed = Step(Phase.forward, Stage.booting, "n2")
    assert [n.name for n in _resumed_first(order, resumed, Phase.forward)] == ["n2", "n3", "n1"]
    # Another phase's step, or none, leaves the repair order alone.
    assert _resumed_first(order, Step(Phase.rollback, Stage.booting, "n2"), Phase.forward) == order
    assert _resumed_first(order, None, Phase.forward) == order
