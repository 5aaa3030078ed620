"""The in-band reimage of stores without a BMC, end to end on 127.0.0.1: the real seed server with
its nocloud-net route serving real seed ISOs built by ``build_seeds``, the fleet simulator with
its Talos API over real mutual TLS, its HTTP API (``/sim/netseed``, the Kubernetes API), and
``reimage_in_band`` as the rollout engine calls it. Boots are time-scaled (60 s at 600x).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgefleet.errors import NetworkSeedError, TalosAccessDenied
from edgefleet.inventory.model import Fleet, Node, Store
from edgefleet.seeds.build import build_seeds, seed_path
from edgefleet.seeds.iso import read_seed_iso
from edgefleet.seeds.netseed import NetSeeds, nocloud_datasource, nocloud_net_url
from edgefleet.seeds.server import SeedServer
from edgefleet.sim.build import build_sim
from edgefleet.sim.fleet import SimFleet
from edgefleet.sim.scenario import Scenario
from edgefleet.sim.server import running_server
from edgefleet.sim.talos_serve import running_talos_api
from edgefleet.sim.talosapi import TalosApiServer
from edgefleet.sim.views import node_view
from edgefleet.talos.api import TalosClient, client_for
from edgefleet.talos.certs import TalosRole
from edgefleet.talos.config import ReleaseRef
from edgefleet.talos.inband import reimage_in_band

pytestmark = pytest.mark.clock  # certificates, tokens or TLS meet the real clock: run again under faketime

INSIDE = datetime(2026, 11, 3, 21, 30, tzinfo=UTC)  # Tuesday 22:30 in Copenhagen: inside 22:00-05:00
OUTSIDE = datetime(2026, 11, 4, 12, 0, tzinfo=UTC)  # 13:00 in Copenhagen
TARGET = ReleaseRef(name="r2", talos_version="v1.12.7", kubernetes_version="1.35.0",
                    installer_image="ghcr.io/siderolabs/installer:v1.12.7")
PW_ENV = "INBAND_TEST_BMC_PASSWORD"


def _store(sid: str, index: int, roles: list[str], *, bmc: bool = False) -> Store:
    nodes: list[dict[str, Any]] = []
    for k, role in enumerate(roles):
        n: dict[str, Any] = {"name": f"{sid}-n{k + 1}", "role": role, "mac": f"02:ef:00:02:{index:02x}:{k + 1:02x}",
                             "ip": f"10.30.{index}.{10 + k}"}
        if bmc:
            n["bmc"] = {"url": f"https://10.30.{index}.{100 + k}",
                        "credentials": {"username": "admin", "password_env": PW_ENV}}
        nodes.append(n)
    return Store.model_validate({
        "id": sid, "name": sid.upper(), "country": "DK", "region": "nordics", "timezone": "Europe/Copenhagen",
        "maintenance_windows": [{"days": ["daily"], "start": "22:00", "end": "05:00"}],
        "network": {"subnet": f"10.30.{index}.0/24", "gateway": f"10.30.{index}.1", "dns": ["10.0.0.53"]},
        "cluster": {"name": sid}, "wipe_method": "bmc" if bmc else "talos-api", "nodes": nodes})


@dataclass
class World:
    fleet: Fleet
    home: Path
    out: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    home = tmp_path_factory.mktemp("home")
    fleet = Fleet(name="inband", stores={
        "one": _store("one", 1, ["controlplane"]),
        "two": _store("two", 2, ["controlplane", "worker", "worker"]),
        "bmc": _store("bmc", 3, ["controlplane"], bmc=True)})
    out = home / "seeds"
    report = build_seeds(fleet, None, None, TARGET, home, out, now=datetime.now(UTC))
    assert len(report.written) == 5
    return World(fleet, home, out)


@dataclass
class Rig:
    world: World
    sim: SimFleet
    api: TalosApiServer
    url: str
    seeds: SeedServer
    net: NetSeeds

    def node(self, name: str) -> tuple[Store, Node]:
        ns = self.sim.nodes[name]
        return ns.store, ns.node

    def client(self, name: str, role: TalosRole = TalosRole.admin) -> TalosClient:
        store, node = self.node(name)
        return client_for(self.world.home, store, node, role, endpoint=self.api.endpoint, ca_pem=self.api.ca_pem,
                          server_name="127.0.0.1", timeout_s=5.0)

    def seed_url(self, name: str, *, now: datetime | None = None) -> str:
        store, node = self.node(name)
        return nocloud_net_url(self.seeds, store, node, now or datetime.now(UTC))

    async def register(self, urls: dict[str, str | None]) -> httpx.Response:
        async with httpx.AsyncClient(trust_env=False, timeout=10) as c:
            return await c.post(f"{self.url}/sim/netseed", content=json.dumps(urls))

    async def k8s_nodes(self, store: str) -> tuple[int, dict[str, Any]]:
        async with httpx.AsyncClient(trust_env=False, timeout=10) as c:
            r = await c.get(f"{self.url}/k8s/{store}/api/v1/nodes")
            return r.status_code, r.json()

    def events(self, node: str, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.sim.events if e["node"] == node and e["kind"] == kind]

    async def until(self, what: str, pred: Callable[[], bool], timeout_s: float = 10.0) -> None:
        for _ in range(int(timeout_s / 0.02)):
            if pred():
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}; events: {list(self.sim.events)[-8:]}")


@asynccontextmanager
async def rig(world: World, *, clock: datetime = INSIDE) -> AsyncIterator[Rig]:
    sim = build_sim(world.fleet, scenario=Scenario(boot_seconds=60), time_scale=600.0, clock=clock,
                    home=world.home, environ={PW_ENV: "pw"})
    seeds = SeedServer(world.out, access_log=world.home / "seeds-access.log")
    net = NetSeeds.attach(seeds)
    for store in world.fleet.stores.values():
        for n in store.nodes:
            net.publish(store.id, n.name, seed_path(world.out, store.id, n.name))
    await seeds.start()
    try:
        async with running_talos_api(sim) as api:
            talos = {"endpoint": api.endpoint, "ca_pem": api.ca_pem.decode()}
            async with running_server(sim, talos=talos) as url:
                yield Rig(world, sim, api, url, seeds, net)
    finally:
        await seeds.stop()


def run(world: World, body: Callable[[Rig], Awaitable[None]], *, clock: datetime = INSIDE) -> None:
    async def main() -> None:
        async with rig(world, clock=clock) as r:
            await asyncio.wait_for(body(r), 60)
    asyncio.run(main())


def _node_obj(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(i for i in data["items"] if i["metadata"]["name"] == name)


def _ready(obj: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in obj["status"]["conditions"])


# --- the seed server's nocloud route ----------------------------------------------------------------


def test_the_route_serves_the_published_seed_to_its_node_only(world: World) -> None:
    async def body(r: Rig) -> None:
        url = r.seed_url("two-n2")
        want = read_seed_iso(seed_path(world.out, "two", "two-n2")).files
        async with httpx.AsyncClient(trust_env=False, timeout=10) as c:
            for name, data in (("meta-data", want.meta_data), ("user-data", want.user_data),
                               ("network-config", want.network_config)):
                got = await c.get(url + name)
                assert got.status_code == 200 and got.content == data
                assert len(got.headers["X-Content-SHA256"]) == 64
                head = await c.head(url + name)
                assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) == len(
                    data)
            assert (await c.get(url + "vendor-data")).status_code == 404
            # another node's path with this node's token
            other = url.replace("/two-n2/", "/two-n3/")
            assert (await c.get(other + "meta-data")).status_code == 403
            # withdrawn: nothing to serve
            r.net.withdraw("two", "two-n2")
            gone = await c.get(url + "meta-data")
            assert gone.status_code == 404 and "no seed is published" in gone.text
            expired = await c.get(r.seed_url("two-n3", now=datetime.now(UTC) - timedelta(hours=7)) + "meta-data")
            assert expired.status_code == 403 and "token expired" in expired.text
            # a file token for the same-looking path does not open the route, nor the route token a file
            file_url = r.seeds.url_for("two/two-n3.iso", "two-n3", datetime.now(UTC))
            assert (await c.get(file_url)).status_code == 200
            token = file_url.split("/")[3]
            assert (await c.get(f"{r.seeds.base_url}/{token}/nocloud/two/two-n3/meta-data")).status_code == 403
            route_token = r.seed_url("two-n3").split("/")[3]
            assert (await c.get(f"{r.seeds.base_url}/{route_token}/two/two-n3.iso")).status_code == 403
        log = (world.home / "seeds-access.log").read_text()
        assert "/nocloud/two/two-n2/user-data 200" in log and route_token not in log

    run(world, body)


# --- in-band reimage ----------------------------------------------------------------------------------


def test_one_node_store_is_wiped_reads_its_seed_over_http_and_forms_after_bootstrap(world: World) -> None:
    async def body(r: Rig) -> None:
        got = await r.register({"one-n1": nocloud_datasource(r.seed_url("one-n1"))})  # as the SMBIOS serial holds it
        assert got.status_code == 200, got.text
        assert got.json()["nodes"]["one-n1"].endswith("/<token>/nocloud/one/one-n1/")
        async with r.client("one-n1") as c:
            _, node = r.node("one-n1")
            res = await reimage_in_band(c, node, seed_url=r.sim.net_seed_urls["one-n1"], deadline_s=20)
            assert (res.graceful, res.needs_bootstrap, res.seed_checked) == (False, True, True)
            assert res.etcd_members == ("one-n1",) and res.wiped == ("STATE", "EPHEMERAL")
            assert res.talos_version == "v1.12.6" and "<token>" in res.seed_url
            assert r.events("one-n1", "talos_reset")[0]["detail"] == {"graceful": False, "reboot": True,
                                                                     "wipe": ["EPHEMERAL", "STATE"]}
            await r.until("the seed read", lambda: bool(r.events("one-n1", "seed_read")))
            read = r.events("one-n1", "seed_read")[0]["detail"]
            assert read["source"] == "network" and read["joined"], read
            status, _ = await r.k8s_nodes("one")
            assert status == 503  # the cluster is unformed until Bootstrap
            await c.bootstrap()
        status, data = await r.k8s_nodes("one")
        assert status == 200
        obj = _node_obj(data, "one-n1")
        assert _ready(obj) and obj["metadata"]["labels"]["edgefleet.io/release"] == "r2"
        assert obj["status"]["nodeInfo"]["osImage"] == "Talos (v1.12.7)"
        assert r.sim.violations == []  # inside the maintenance window

    run(world, body)


def test_worker_is_reset_gracefully_and_joins_on_the_target_release(world: World) -> None:
    async def body(r: Rig) -> None:
        r.sim.net_seed_urls["two-n2"] = r.seed_url("two-n2")
        async with r.client("two-n1") as c:  # through the control plane's endpoint, naming the worker
            _, node = r.node("two-n2")
            res = await reimage_in_band(c, node, seed_url=r.sim.net_seed_urls["two-n2"], deadline_s=20)
        assert res.graceful and not res.needs_bootstrap and res.etcd_members == ()

        async def joined() -> bool:
            status, data = await r.k8s_nodes("two")
            obj = _node_obj(data, "two-n2")
            return status == 200 and _ready(obj) and obj["metadata"]["labels"]["edgefleet.io/release"] == "r2"
        for _ in range(500):
            if await joined():
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError(f"two-n2 did not join: {node_view(r.sim, r.sim.nodes['two-n2'])}")
        assert r.sim.nodes["two-n3"].release == "initial"  # untouched
        assert r.sim.violations == []

    run(world, body)


def test_a_reader_certificate_cannot_reset(world: World) -> None:
    async def body(r: Rig) -> None:
        r.sim.net_seed_urls["two-n3"] = r.seed_url("two-n3")
        async with r.client("two-n3", TalosRole.reader) as c:
            _, node = r.node("two-n3")
            with pytest.raises(TalosAccessDenied, match="Reset needs one of os:admin") as e:
                await reimage_in_band(c, node, seed_url=r.sim.net_seed_urls["two-n3"], deadline_s=20)
            assert e.value.code == "PERMISSION_DENIED" and not e.value.transient
        ns = r.sim.nodes["two-n3"]
        assert ns.joined and not ns.booting and not r.events("two-n3", "talos_reset")

    run(world, body)


def test_an_expired_token_is_caught_before_the_wipe_or_leaves_the_node_unjoined(world: World) -> None:
    async def body(r: Rig) -> None:
        stale = r.seed_url("two-n3", now=datetime.now(UTC) - timedelta(hours=7))
        r.sim.net_seed_urls["two-n3"] = stale
        _, node = r.node("two-n3")
        async with r.client("two-n3") as c:
            with pytest.raises(NetworkSeedError, match="HTTP 403: 403 Forbidden: token expired") as e:
                await reimage_in_band(c, node, seed_url=stale, deadline_s=20)
            assert e.value.status == 403 and not e.value.transient and "<token>" in str(e.value)
            assert not r.events("two-n3", "talos_reset") and r.sim.nodes["two-n3"].joined  # nothing wiped
            # without the check the node is wiped and cannot fetch its seed
            await reimage_in_band(c, node, seed_url=stale, deadline_s=20, check_seed=False)
        await r.until("the failed seed read", lambda: bool(r.events("two-n3", "seed_read")))
        read = r.events("two-n3", "seed_read")[0]["detail"]
        assert not read["joined"] and "token expired" in read["reason"] and "<token>" in read["url"], read
        ns = r.sim.nodes["two-n3"]
        assert not ns.joined and "token expired" in ns.reason
        status, data = await r.k8s_nodes("two")
        assert status == 200 and not _ready(_node_obj(data, "two-n3"))
        # a fresh URL (its serial fixed): the waiting node fetches again and joins
        got = await r.register({"two-n3": r.seed_url("two-n3")})
        assert got.status_code == 200 and got.json()["fetching_again"] == ["two-n3"]
        await r.until("the second seed read", lambda: len(r.events("two-n3", "seed_read")) == 2)
        assert ns.joined and ns.release == "r2", ns.reason

    run(world, body)


def test_the_oracle_flags_a_reset_outside_the_window(world: World) -> None:
    async def body(r: Rig) -> None:
        r.sim.net_seed_urls["two-n2"] = r.seed_url("two-n2")
        _, node = r.node("two-n2")
        async with r.client("two-n2") as c:
            await reimage_in_band(c, node, seed_url=r.sim.net_seed_urls["two-n2"], deadline_s=20)
        rules = [(v.node, v.rule) for v in r.sim.violations]
        assert rules == [("two-n2", "outside_window")], r.sim.violations

    run(world, body, clock=OUTSIDE)


def test_registration_is_checked(world: World) -> None:
    async def body(r: Rig) -> None:
        good = r.seed_url("two-n2")
        for urls, why in (({"bmc-n1": r.seed_url("bmc-n1")}, "wipe_method bmc"),
                          ({"two-n2": good.replace("127.0.0.1", "10.30.2.2")}, "only fetches http(s)://127.0.0.1"),
                          ({"two-n2": good.rstrip("/")}, "must end with '/'"),
                          ({"nope": good}, "no simulated node"),
                          ({"two-n2": "ds=nocloud-net;h=x"}, "no ds=nocloud-net;s=URL")):
            got = await r.register(urls)  # type: ignore[arg-type]
            assert got.status_code == 400 and why in got.json()["error"], (urls, got.text)
        assert r.sim.net_seed_urls == {}
        assert (await r.register({"two-n2": good})).status_code == 200
        assert (await r.register({"two-n2": None})).json()["nodes"] == {}

        # a wiped node without a URL waits in maintenance mode, saying why
        _, node = r.node("two-n2")
        async with r.client("two-n2") as c:
            await reimage_in_band(c, node, seed_url=good, deadline_s=20)
        await r.until("the boot", lambda: bool(r.events("two-n2", "boot_done")) and bool(r.sim.nodes["two-n2"].reason))
        await r.until("the wiring's sync", lambda: "no nocloud-net URL registered" in r.sim.nodes["two-n2"].reason)
        assert not r.events("two-n2", "seed_read")

    run(world, body)


@pytest.mark.slow
def test_cloud_init_reads_the_seed_from_the_datasource_string(world: World, cloudinit: Any, tmp_path: Path) -> None:
    """cloud-init's own NoCloud parses the ds= string and fetches the files from the route (an
    outside reader of the same protocol as Talos)."""
    store = world.fleet.stores["two"]
    node = store.nodes[1]
    want = read_seed_iso(seed_path(world.out, "two", node.name)).files
    with SeedServer(world.out) as server:
        NetSeeds.attach(server).publish("two", node.name, seed_path(world.out, "two", node.name))
        url = nocloud_net_url(server, store, node, datetime.now(UTC))
        cmdline = f"talos.platform=nocloud {nocloud_datasource(url)}"
        # retries=0: cloud-init 22.4 asks for vendor-data too, which the route does not serve (404)
        script = (
            "import json, sys\n"
            "from cloudinit import util\n"
            "from cloudinit.sources import DataSourceNoCloud as m\n"
            "fill = {}\n"
            "assert m.load_cmdline_data(fill, sys.argv[1]), 'no ds= found'\n"
            "url = fill['seedfrom']\n"
            "md, ud, vd = util.read_seeded(url, timeout=5, retries=0)\n"
            "print(json.dumps({'url': url, 'dsmode': fill['dsmode'], 'md': md, 'ud': ud.decode(), 'vd': vd}))\n")
        proc = subprocess.run([str(cloudinit.python), "-c", script, cmdline], env=cloudinit.env, capture_output=True,
                              text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["url"].endswith(f"/nocloud/two/{node.name}/") and got["dsmode"] == "net"
    assert got["md"]["local-hostname"] == node.name and got["ud"] == want.user_data.decode()
    assert got["vd"] is None
