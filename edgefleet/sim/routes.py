"""The simulator's HTTP routes besides the BMCs (``edgefleet.sim.server`` serves them all): each
store's Kubernetes API and custom probes (``StoreApis``: ``/k8s/...``, ``/probes/...``) and the
simulator's own API (``SimApi``: ``/sim/...``); the routes are listed in ``edgefleet.sim.server``."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from edgefleet.errors import InputError
from edgefleet.sim.fleet import SimFleet
from edgefleet.sim.k8s import node_list, node_object, pod_list, readyz
from edgefleet.sim.oracle_trains import parse_train
from edgefleet.sim.scenario import update_scenario
from edgefleet.sim.views import node_request_counts, node_view, operation_request_counts

__all__ = ["SimApi", "StoreApis", "json_bytes", "sim_report"]


def json_bytes(data: Any) -> bytes:
    """Compact JSON, as every simulator response carries it."""
    return json.dumps(data, separators=(",", ":"), default=str).encode()


def sim_report(sim: SimFleet) -> dict[str, Any]:
    """``/sim/report``: the fleet's summary, its faults, events and violations."""
    ready = sum(1 for ns in sim.nodes.values() if sim.readiness(ns)[0])
    releases = Counter(ns.release for ns in sim.nodes.values())
    return {
        "clock": sim.clock.now().isoformat(), "time_scale": sim.clock.scale,
        "stores": len(sim.store_nodes), "nodes": len(sim.nodes), "ready": ready,
        "not_ready": len(sim.nodes) - ready, "rebooting": len(sim.rebooting),
        "releases": dict(releases.most_common()), "boots": dict(sim.boots),
        "requests": dict(sim.requests), "faults_injected": dict(sim.faults),
        "operation_requests": operation_request_counts(sim),
        "node_requests": node_request_counts(sim),
        "media": {"downloads": sim.fetcher.downloads, "bytes": sim.fetcher.bytes,
                  "images_parsed": sim.fetcher.parses, "release_images_cached": len(sim.fetcher.releases)},
        "events": dict(sim.event_counts),
        "violations": {"total": sum(sim.violation_counts.values()), "by_rule": dict(sim.violation_counts),
                       "list": [v.as_dict() for v in sim.violations[:1000]]},
        "scenario": sim.scenario.dump(),
    }


class StoreApis:
    """Each store's Kubernetes API (readyz, the node list) and its custom HTTP probes."""

    def __init__(self, sim: SimFleet):
        self.sim = sim

    def routes(self) -> list[Route]:
        return [
            Route("/k8s/{store}/readyz", self.k8s_readyz),
            Route("/k8s/{store}/api/v1/nodes", self.k8s_nodes),
            Route("/k8s/{store}/api/v1/nodes/{node}", self.k8s_node, methods=["GET", "PATCH"]),
            Route("/k8s/{store}/api/v1/pods", self.k8s_pods),
            Route("/k8s/{store}/api/v1/namespaces/{ns}/pods/{pod}/eviction", self.k8s_evict, methods=["POST"]),
            Route("/probes/{store}/{name}", self.store_probe),
        ]

    async def k8s_readyz(self, request: Request) -> Response:
        sid = request.path_params["store"]
        self.sim.requests["k8s readyz"] += 1
        if sid not in self.sim.store_nodes:
            return PlainTextResponse(f"no store {sid}\n", 404)
        code, text = readyz(self.sim, sid)
        return PlainTextResponse(text, code)

    def _unavailable(self, sid: str) -> Response | None:
        if sid not in self.sim.store_nodes:
            return JSONResponse(_k8s_status(404, "NotFound", f"no store {sid}"), 404)
        if not self.sim.store_up(sid):
            return JSONResponse(_k8s_status(503, "ServiceUnavailable", readyz(self.sim, sid)[1].strip()), 503)
        return None

    async def k8s_node(self, request: Request) -> Response:
        """One Node; PATCH (a merge patch) sets ``spec.unschedulable`` (cordon / uncordon)."""
        sid, name = request.path_params["store"], request.path_params["node"]
        self.sim.requests[f"k8s node {request.method}"] += 1
        if (down := self._unavailable(sid)) is not None:
            return down
        ns = self.sim.nodes.get(name)
        if ns is None or ns.store.id != sid:
            return JSONResponse(_k8s_status(404, "NotFound", f'nodes "{name}" not found'), 404)
        if request.method == "PATCH":
            try:
                spec = json.loads(await request.body()).get("spec", {})
                flag = spec.get("unschedulable")
            except (ValueError, AttributeError) as e:
                return JSONResponse(_k8s_status(400, "BadRequest", f"not a merge patch: {e}"), 400)
            if flag is not None:
                if not isinstance(flag, bool):
                    return JSONResponse(_k8s_status(422, "Invalid", "spec.unschedulable: must be a boolean"), 422)
                self.sim.node_requests[(name, "k8s cordon" if flag else "k8s uncordon")] += 1
                self.sim.workloads.cordon(sid, name, flag)
                self.sim.event("k8s_cordon", node=ns, detail={"unschedulable": flag})
        now = self.sim.clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
        return Response(json_bytes(node_object(self.sim, ns, now)), media_type="application/json")

    async def k8s_pods(self, request: Request) -> Response:
        """The store's pods; ``fieldSelector=spec.nodeName=NAME`` narrows them to one node."""
        sid = request.path_params["store"]
        self.sim.requests["k8s pods"] += 1
        if (down := self._unavailable(sid)) is not None:
            return down
        sel = request.query_params.get("fieldSelector", "")
        node = sel.removeprefix("spec.nodeName=") if sel.startswith("spec.nodeName=") else None
        if sel and node is None:
            return JSONResponse(_k8s_status(400, "BadRequest", f"field selector {sel!r} is not supported here"), 400)
        return Response(json_bytes(pod_list(self.sim, sid, node)), media_type="application/json")

    async def k8s_evict(self, request: Request) -> Response:
        """The Eviction API: 201, or 429 when the pod's disruption budget forbids it."""
        sid, pod = request.path_params["store"], request.path_params["pod"]
        self.sim.requests["k8s eviction"] += 1
        if (down := self._unavailable(sid)) is not None:
            return down
        target = next((p for p in self.sim.workloads.pods(sid) if p.name == pod), None)
        if target is not None:
            self.sim.node_requests[(target.node, "k8s evict")] += 1
        code, body = self.sim.workloads.evict(sid, pod, [ns.name for ns in self.sim.store_nodes[sid]])
        self.sim.event("k8s_eviction", store=sid, node=self.sim.nodes[target.node] if target else None,
                       detail={"pod": pod, "code": code})
        return JSONResponse(body, code)

    async def store_probe(self, request: Request) -> Response:
        """The store's custom HTTP probes (inventory ``probes``): a store's systems answer while its
        cluster serves; an offline store answers 503."""
        sid, name = request.path_params["store"], request.path_params["name"]
        self.sim.requests["store probe"] += 1
        store = self.sim.fleet.stores.get(sid)
        probe = next((p for p in store.probes if p.name == name), None) if store else None
        if probe is None:
            return PlainTextResponse(f"no probe {name} in store {sid}\n", 404)
        if not self.sim.store_up(sid):
            return PlainTextResponse("store systems unavailable\n", 503)
        return PlainTextResponse("ok\n", probe.expect_status)

    async def k8s_nodes(self, request: Request) -> Response:
        sid = request.path_params["store"]
        self.sim.requests["k8s nodes"] += 1
        if sid not in self.sim.store_nodes:
            return JSONResponse({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                 "message": f"no store {sid}", "reason": "NotFound", "code": 404}, 404)
        if not self.sim.store_up(sid):
            return JSONResponse({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                 "message": readyz(self.sim, sid)[1].strip(), "reason": "ServiceUnavailable",
                                 "code": 503}, 503)
        if self.sim.kube_burst_fault(sid):
            self.sim.faults["k8s_burst"] += 1
            return JSONResponse({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                 "message": "internal error (simulated burst)", "reason": "InternalError",
                                 "code": 500}, 500)
        return Response(json_bytes(node_list(self.sim, sid)), media_type="application/json")


def _k8s_status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason,
            "code": code}


class SimApi:
    """The simulator's own API: endpoints, clock, state, events, violations, report, scenario,
    network seeds, the train oracle's trains and release states. ``talos``: where the simulated
    Talos API listens (``endpoint``) and the CA PEM it presents (``ca_pem``), listed by
    ``/sim/endpoints``."""

    def __init__(self, sim: SimFleet, talos: Mapping[str, str] | None = None):
        self.sim = sim
        self.talos = talos

    def routes(self) -> list[Route]:
        return [
            Route("/sim/endpoints", self.endpoints),
            Route("/sim/clock", self.clock, methods=["GET", "POST"]),
            Route("/sim/state", self.state),
            Route("/sim/events", self.events),
            Route("/sim/violations", self.violations),
            Route("/sim/report", self.report),
            Route("/sim/operations", self.operations),
            Route("/sim/scenario", self.scenario, methods=["GET", "POST"]),
            Route("/sim/netseed", self.netseed, methods=["GET", "POST"]),
            Route("/sim/oracle", self.oracle),
            Route("/sim/oracle/train", self.oracle_train, methods=["POST"]),
            Route("/sim/oracle/release", self.oracle_release, methods=["POST"]),
        ]

    async def endpoints(self, request: Request) -> Response:
        b = str(request.base_url).rstrip("/")
        data: dict[str, Any] = {"nodes": {n: f"{b}/bmc/{n}" for n in self.sim.nodes},
                                "stores": {s: f"{b}/k8s/{s}" for s in self.sim.store_nodes},
                                "probes": f"{b}/probes"}
        if self.talos:
            data["talos"] = dict(self.talos)
        return Response(json_bytes(data), media_type="application/json")

    async def clock(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                data = json.loads(await request.body())
                when = datetime.fromisoformat(str(data["now"]).replace("Z", "+00:00"))
                self.sim.clock.set(when)
            except (ValueError, KeyError, TypeError, InputError) as e:
                return JSONResponse({"error": f"send {{\"now\": \"2026-11-02T23:30:00Z\"}}: {e}"}, 400)
            self.sim.event("clock_set", detail={"now": self.sim.clock.now().isoformat()})
        return JSONResponse({"now": self.sim.clock.now().isoformat(), "time_scale": self.sim.clock.scale})

    async def state(self, request: Request) -> Response:
        q = request.query_params
        if "node" in q:
            ns = self.sim.nodes.get(q["node"])
            if ns is None:
                return JSONResponse({"error": f"no node {q['node']!r}"}, 404)
            picked = [ns]
        elif "store" in q:
            if q["store"] not in self.sim.store_nodes:
                return JSONResponse({"error": f"no store {q['store']!r}"}, 404)
            picked = self.sim.store_nodes[q["store"]]
        else:
            picked = list(self.sim.nodes.values())
        return Response(json_bytes({"clock": self.sim.clock.now().isoformat(),
                                    "nodes": {ns.name: node_view(self.sim, ns) for ns in picked}}),
                        media_type="application/json")

    async def events(self, request: Request) -> Response:
        q = request.query_params
        try:
            since = int(q.get("since", "0"))
            limit = max(1, min(int(q.get("limit", "1000")), 100_000))
        except ValueError:
            return JSONResponse({"error": "since and limit are integers"}, 400)
        want = {k: q[k] for k in ("store", "node", "kind") if k in q}
        out = []
        for e in self.sim.events:
            if e["seq"] <= since or any(e[k] != v for k, v in want.items()):
                continue
            out.append(e)
            if len(out) >= limit:
                break
        return Response(json_bytes({"last_seq": self.sim.event_seq, "events": out}), media_type="application/json")

    async def violations(self, request: Request) -> Response:
        sim = self.sim
        return Response(json_bytes({"total": sum(sim.violation_counts.values()), "by_rule": dict(sim.violation_counts),
                                    "violations": [v.as_dict() for v in sim.violations]}),
                        media_type="application/json")

    async def operations(self, request: Request) -> Response:
        return Response(json_bytes(operation_request_counts(self.sim)), media_type="application/json")

    async def report(self, request: Request) -> Response:
        return Response(json_bytes(sim_report(self.sim)), media_type="application/json")

    async def scenario(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                changes = json.loads(await request.body())
                self.sim.set_scenario(update_scenario(self.sim.scenario, changes))
            except ValueError as e:
                return JSONResponse({"error": f"not JSON: {e}"}, 400)
            except InputError as e:
                return JSONResponse({"error": str(e)}, 400)
        return JSONResponse(self.sim.scenario.dump())

    async def netseed(self, request: Request) -> Response:
        from edgefleet.sim.netseed import register, registered

        if request.method == "POST":
            try:
                again = register(self.sim, json.loads(await request.body()))
            except ValueError as e:
                return JSONResponse({"error": f"not JSON: {e}"}, 400)
            except InputError as e:
                return JSONResponse({"error": str(e)}, 400)
            return JSONResponse({"nodes": registered(self.sim), "fetching_again": again})
        return JSONResponse({"nodes": registered(self.sim)})

    async def oracle(self, request: Request) -> Response:
        sim = self.sim
        return Response(json_bytes(sim.trains.view(sim.clock.now(), sim.train_facts)), media_type="application/json")

    async def oracle_train(self, request: Request) -> Response:
        """Declare a train (``edgefleet.sim.oracle_trains``: its stages in order, soak, failure budgets)."""
        try:
            train = parse_train(json.loads(await request.body()), self.sim.store_nodes)
        except ValueError as e:
            return JSONResponse({"error": f"not JSON: {e}"}, 400)
        except InputError as e:
            return JSONResponse({"error": str(e)}, 400)
        self.sim.trains.declare(train, running={ns.release for ns in self.sim.nodes.values()})
        self.sim.event("oracle_train", detail={"release": train.release,
                                               "stages": [list(st.stores) for st in train.stages]})
        return await self.oracle(request)

    async def oracle_release(self, request: Request) -> Response:
        """Tell the oracle a release's catalog state: ``{"release": R, "state": "stable"}``."""
        try:
            data = json.loads(await request.body())
            if not isinstance(data, dict) or not isinstance(data.get("release"), str) or set(data) != {"release",
                                                                                                        "state"}:
                raise InputError(f'send {{"release": R, "state": "stable"}}, not {data!r}')
            self.sim.trains.tell(data["release"], str(data["state"]), self.sim.clock.now(),
                                 running={ns.release for ns in self.sim.nodes.values()})
        except ValueError as e:
            return JSONResponse({"error": f"not JSON: {e}"}, 400)
        except InputError as e:
            return JSONResponse({"error": str(e)}, 400)
        self.sim.event("oracle_release", detail=data)
        return await self.oracle(request)
