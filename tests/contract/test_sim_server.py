"""The fleet simulator over real HTTP on 127.0.0.1: reimages built from real artifacts (a remastered
release image and NoCloud seeds served by edgefleet's seed server with expiring tokens), readiness,
Redfish shapes and errors, scenario faults and every oracle rule (firing and not firing)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgefleet.errors import ProbeError
from edgefleet.inventory.generate import write_inventory
from edgefleet.inventory.load import load_fleet
from edgefleet.inventory.model import Fleet
from edgefleet.releases.image import remaster
from edgefleet.releases.upstream import write_fake_upstream
from edgefleet.secrets import ClusterSecrets, generate_secrets, store_secrets
from edgefleet.seeds.iso import write_seed_iso
from edgefleet.seeds.render import render_seed_files
from edgefleet.seeds.server import SeedServer
from edgefleet.sim.build import build_sim
from edgefleet.sim.scenario import Scenario, parse_scenario
from edgefleet.sim.server import running_server
from edgefleet.talos.config import ReleaseRef

pytestmark = pytest.mark.clock  # certificates, tokens or TLS meet the real clock: run again under faketime

PASSWORD_ENV = "SIM_TEST_BMC_PASSWORD"
PASSWORD = "s3cret-bmc"
USER = "admin"
INSIDE = datetime(2026, 11, 3, 22, 30, tzinfo=UTC)  # Tuesday 23:30 in Copenhagen: inside 22:00-05:00
OUTSIDE = datetime(2026, 11, 3, 12, 0, tzinfo=UTC)  # Tuesday 13:00 local
FROZEN = datetime(2026, 11, 24, 22, 30, tzinfo=UTC)  # Tuesday night, in the black-friday freeze
RELEASE = ReleaseRef(name="r2026.11", talos_version="v1.12.6", kubernetes_version="1.35.0",
                     installer_image="factory.talos.dev/installer/abc:v1.12.6")


def _store(sid: str, cc: str, index: int, roles: list[str]) -> dict[str, Any]:
    net = 16 * 256 + index
    prefix = f"10.{net // 256}.{net % 256}"
    return {"id": sid, "name": f"Store {sid}", "country": cc, "region": "nordics",
            "network": {"subnet": f"{prefix}.0/24", "gateway": f"{prefix}.1"},
            "cluster": {"name": sid, **({"vip": f"{prefix}.9"} if len(roles) > 1 else {})},
            "nodes": [{"name": f"{sid}-n{k + 1}", "role": role, "mac": f"02:ef:00:00:{index:02x}:{k + 1:02x}",
                       "ip": f"{prefix}.{10 + k}", "bmc": {"url": f"https://{prefix}.{100 + k}"}}
                      for k, role in enumerate(roles)]}


def make_inventory(root: Path) -> Fleet:
    cp3 = ["controlplane"] * 3
    fleet = {"fleet": {"name": "simtest"},
             "defaults": {"maintenance_windows": [{"days": ["daily"], "start": "22:00", "end": "05:00"}],
                          "network": {"dns": ["10.0.0.53"]},
                          "node_defaults": {"bmc": {"credentials": {"username": USER, "password_env": PASSWORD_ENV}}}},
             "freezes": [{"name": "black-friday", "start": "2026-11-23", "end": "2026-11-30", "reason": "trading"}]}
    gv = {"country_dk": {"timezone": "Europe/Copenhagen"}, "country_no": {"timezone": "Europe/Oslo"}}
    stores = {"dk": [_store("dk-0001", "DK", 1, cp3), _store("dk-0002", "DK", 2, ["controlplane"])],
              "no": [_store("no-0001", "NO", 3, [*cp3, "worker"])]}
    return load_fleet(write_inventory(root, fleet, gv, stores))


@dataclass
class Artifacts:
    fleet: Fleet
    home: Path
    root: Path  # served by the seed server
    secrets: dict[str, ClusterSecrets]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    tmp = tmp_path_factory.mktemp("sim")
    fleet = make_inventory(tmp / "inventory")
    home, root = tmp / "home", tmp / "www"
    now = datetime(2026, 11, 1, tzinfo=UTC)
    secrets = {sid: generate_secrets(now) for sid in ("dk-0001", "dk-0002")}
    for sid, s in secrets.items():
        store_secrets(home, sid, s)
    up = tmp / "upstream.iso"
    sha = write_fake_upstream(up, RELEASE.talos_version)
    (root / "releases").mkdir(parents=True)
    remaster(up, root / "releases" / "r2026.11.iso", release=RELEASE.name, talos_version=RELEASE.talos_version,
             kubernetes_version=RELEASE.kubernetes_version, installer_image=RELEASE.installer_image,
             extensions=[], kernel_args=["talos.platform=nocloud", "console=ttyS0"], upstream_sha256=sha)
    for sid, s in secrets.items():
        store = fleet.store(sid)
        for node in store.nodes:
            write_seed_iso(root / "seeds" / f"{node.name}.iso", render_seed_files(store, node, RELEASE, s))
    # A seed for dk-0001-n1 rendered with dk-0002's secrets: the wrong cluster CA.
    write_seed_iso(root / "seeds" / "dk-0001-n1-wrong-ca.iso",
                   render_seed_files(fleet.store("dk-0001"), fleet.store("dk-0001").nodes[0], RELEASE,
                                     secrets["dk-0002"]))
    return Artifacts(fleet, home, root, secrets)


@dataclass
class Rig:
    sim_url: str
    seeds: SeedServer
    client: httpx.AsyncClient
    sim: Any

    def bmc(self, node: str) -> str:
        return f"{self.sim_url}/bmc/{node}/redfish/v1"

    def image_url(self, node: str) -> str:
        return self.seeds.url_for("releases/r2026.11.iso", node, datetime.now(UTC))

    def seed_url(self, node: str, name: str | None = None) -> str:
        return self.seeds.url_for(f"seeds/{name or node}.iso", node, datetime.now(UTC))

    async def violations(self) -> dict[str, Any]:
        r = await self.client.get(f"{self.sim_url}/sim/violations")
        return dict(r.json())

    async def ready(self, store: str) -> dict[str, tuple[bool, dict[str, Any]]]:
        r = await self.client.get(f"{self.sim_url}/k8s/{store}/api/v1/nodes")
        assert r.status_code == 200, r.text
        out = {}
        for item in r.json()["items"]:
            cond = next(c for c in item["status"]["conditions"] if c["type"] == "Ready")
            out[item["metadata"]["name"]] = (cond["status"] == "True", item)
        return out

    async def is_ready(self, store: str, node: str) -> bool:
        """Ready per the store's API; False while the API is down (a one-node store rebooting)."""
        r = await self.client.get(f"{self.sim_url}/k8s/{store}/api/v1/nodes")
        if r.status_code == 503:
            return False
        return (await self.ready(store))[node][0]

    async def wait(self, check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await check():
                return
            await asyncio.sleep(0.05)
        raise AssertionError("condition not reached in time")

    async def reimage(self, node: str, *, op: str | None = "op-1", seed: str | None = None,
                      image: str | None = None, reset: str = "ForceRestart") -> None:
        h = {"X-Edgefleet-Operation": op} if op else {}
        b = self.bmc(node)
        r = await self.client.post(f"{b}/Managers/1/VirtualMedia/Cd/Actions/VirtualMedia.InsertMedia",
                                   json={"Image": image or self.image_url(node)}, headers=h)
        assert r.status_code == 204, r.text
        r = await self.client.post(f"{b}/Managers/1/VirtualMedia/Usb/Actions/VirtualMedia.InsertMedia",
                                   json={"Image": self.seed_url(node, seed)}, headers=h)
        assert r.status_code == 204, r.text
        etag = (await self.client.get(f"{b}/Systems/1")).headers["etag"]
        r = await self.client.patch(f"{b}/Systems/1", headers={**h, "If-Match": etag},
                                    json={"Boot": {"BootSourceOverrideTarget": "Cd",
                                                   "BootSourceOverrideEnabled": "Once"}})
        assert r.status_code == 200, r.text
        r = await self.client.post(f"{b}/Systems/1/Actions/ComputerSystem.Reset", json={"ResetType": reset},
                                   headers=h)
        assert r.status_code == 204, r.text


def run(artifacts: Artifacts, body: Callable[[Rig], Awaitable[None]], *, clock: datetime = INSIDE,
        scenario: dict[str, Any] | None = None, time_scale: float = 1.0) -> None:
    sc = parse_scenario({"boot_seconds": 0.3, **(scenario or {})})

    async def main() -> None:
        sim = build_sim(artifacts.fleet, scenario=sc, time_scale=time_scale, clock=clock, home=artifacts.home,
                        environ={PASSWORD_ENV: PASSWORD})
        seeds = SeedServer(artifacts.root, token_ttl_s=3600)
        await seeds.start()
        try:
            async with running_server(sim) as url, \
                    httpx.AsyncClient(auth=(USER, PASSWORD), timeout=10, trust_env=False) as client:
                await body(Rig(url, seeds, client, sim))
        finally:
            await seeds.stop()

    asyncio.run(main())


# --- a reimage end to end ---------------------------------------------------------------------------

def test_reimage_boots_release_and_joins(artifacts: Artifacts) -> None:
    async def body(rig: Rig) -> None:
        before = await rig.ready("dk-0001")
        assert before["dk-0001-n1"][0]
        assert before["dk-0001-n1"][1]["metadata"]["labels"]["edgefleet.io/release"] == "initial"
        await rig.reimage("dk-0001-n1")
        during = await rig.ready("dk-0001")
        assert not during["dk-0001-n1"][0]  # booting
        assert during["dk-0001-n2"][0]

        async def joined() -> bool:
            return (await rig.ready("dk-0001"))["dk-0001-n1"][0]

        await rig.wait(joined)
        item = (await rig.ready("dk-0001"))["dk-0001-n1"][1]
        assert item["metadata"]["labels"]["edgefleet.io/release"] == "r2026.11"
        assert item["status"]["nodeInfo"]["osImage"] == "Talos (v1.12.6)"
        assert item["status"]["nodeInfo"]["kubeletVersion"] == "v1.35.0"
        state = (await rig.client.get(f"{rig.sim_url}/sim/state", params={"node": "dk-0001-n1"})).json()
        node = state["nodes"]["dk-0001-n1"]
        assert node["release"] == "r2026.11" and node["ready"] and node["power"] == "On"
        assert node["seed_instance_id"] and set(node["media"]) == {"Cd", "Usb"}
        assert node["boot"] == {"target": "None", "enabled": "Disabled"}  # the one-time override is used up
        assert (await rig.violations())["total"] == 0
        ev = (await rig.client.get(f"{rig.sim_url}/sim/events", params={"node": "dk-0001-n1"})).json()["events"]
        kinds = [e["kind"] for e in ev]
        assert kinds == ["insert", "insert", "boot_override", "reset", "boot_start", "boot_done"]
        assert ev[-1]["detail"]["joined"] is True and ev[0]["operation"] == "op-1"
        # Release images are read once per sha256: a second node's insert reuses the parse.
        parsed = rig.sim.fetcher.parses
        await rig.reimage("dk-0001-n2")
        assert rig.sim.fetcher.parses == parsed + 1  # only the new seed
        report = (await rig.client.get(f"{rig.sim_url}/sim/report")).json()
        assert report["media"]["release_images_cached"] == 1 and report["nodes"] == 8

    run(artifacts, body)


@pytest.mark.parametrize(("seed", "reason"), [
    ("dk-0001-n1-wrong-ca", "not this store's Kubernetes CA"),
    ("dk-0001-n2", "names host 'dk-0001-n2'"),
])
def test_bad_seed_stays_not_ready_with_reason(artifacts: Artifacts, seed: str, reason: str) -> None:
    async def body(rig: Rig) -> None:
        await rig.reimage("dk-0001-n1", seed=seed)

        async def booted() -> bool:
            ev = (await rig.client.get(f"{rig.sim_url}/sim/events",
                                       params={"node": "dk-0001-n1", "kind": "boot_done"})).json()["events"]
            return bool(ev)

        await rig.wait(booted)
        await asyncio.sleep(0.2)
        ready, item = (await rig.ready("dk-0001"))["dk-0001-n1"]
        assert not ready
        assert reason in item["status"]["conditions"][0]["message"]
        ev = (await rig.client.get(f"{rig.sim_url}/sim/events",
                                   params={"node": "dk-0001-n1", "kind": "boot_done"})).json()["events"]
        assert ev[0]["detail"]["joined"] is False and reason in ev[0]["detail"]["reason"]

    run(artifacts, body)


def test_reset_without_override_reboots_installed_release(artifacts: Artifacts) -> None:
    async def body(rig: Rig) -> None:
        b = rig.bmc("dk-0002-n1")
        r = await rig.client.post(f"{b}/Managers/1/VirtualMedia/Cd/Actions/VirtualMedia.InsertMedia",
                                  json={"Image": rig.image_url("dk-0002-n1")})
        assert r.status_code == 204
        r = await rig.client.post(f"{b}/Systems/1/Actions/ComputerSystem.Reset", json={"ResetType": "ForceRestart"})
        assert r.status_code == 204
        assert (await rig.client.get(f"{rig.sim_url}/k8s/dk-0002/readyz")).status_code == 503  # its only CP
        r503 = await rig.client.get(f"{rig.sim_url}/k8s/dk-0002/api/v1/nodes")
        assert r503.status_code == 503 and r503.json()["kind"] == "Status"

        async def up() -> bool:
            return (await rig.client.get(f"{rig.sim_url}/k8s/dk-0002/readyz")).status_code == 200

        await rig.wait(up)
        ready, item = (await rig.ready("dk-0002"))["dk-0002-n1"]
        assert ready and item["metadata"]["labels"]["edgefleet.io/release"] == "initial"
        ev = (await rig.client.get(f"{rig.sim_url}/sim/events", params={"kind": "boot_start"})).json()["events"]
        assert ev[0]["detail"]["source"] == "disk"

    run(artifacts, body)


def test_reimage_through_the_redfish_driver(artifacts: Artifacts) -> None:
    from edgefleet.redfish.connector import BmcClients, connector_for_node
    from edgefleet.redfish.driver import RedfishDriver, reimage_sequence

    async def body(rig: Rig) -> None:
        node = artifacts.fleet.store("dk-0001").nodes[2]
        async with BmcClients() as clients:
            conn = connector_for_node(node, clients, resolver=lambda n: f"{rig.sim_url}/bmc/{n.name}",
                                      operation_id="rollout-7", environ={PASSWORD_ENV: PASSWORD})
            driver = RedfishDriver(conn, poll_interval_s=0.05)
            result = await reimage_sequence(driver, rig.image_url(node.name), rig.seed_url(node.name),
                                            power_deadline_s=5)
            assert result.boot_slot == "Cd" and result.seed_slot == "Usb"

            async def joined() -> bool:
                return (await rig.ready("dk-0001"))[node.name][0]

            await rig.wait(joined)
            await conn.aclose()
        item = (await rig.ready("dk-0001"))[node.name][1]
        assert item["metadata"]["labels"]["edgefleet.io/release"] == "r2026.11"
        ev = (await rig.client.get(f"{rig.sim_url}/sim/events", params={"node": node.name})).json()["events"]
        assert {e["operation"] for e in ev if e["kind"] in ("insert", "reset")} == {"rollout-7"}
        assert (await rig.violations())["total"] == 0

    run(artifacts, body)


# --- InsertMedia downloads for real ------------------------------------------------------------------

async def _raw_server(body: bytes, sha_header: str | None) -> tuple[asyncio.Server, str]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n"
        if sha_header is not None:
            head += b"X-Content-SHA256: " + sha_header.encode() + b"\r\n"
        writer.write(head + b"\r\n" + body)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/image.iso"


def test_insert_media_refuses_bad_downloads(artifacts: Artifacts) -> None:
    async def body(rig: Rig) -> None:
        target = f"{rig.bmc('dk-0001-n1')}/Managers/1/VirtualMedia/Cd/Actions/VirtualMedia.InsertMedia"

        async def insert(url: str) -> httpx.Response:
            return await rig.client.post(target, json={"Image": url})

        r = await insert("http://10.16.1.100/release.iso")
        assert r.status_code == 400 and "only fetches" in r.json()["error"]["message"]
        expired = rig.seeds.url_for("releases/r2026.11.iso", "dk-0001-n1", datetime(2020, 1, 1, tzinfo=UTC))
        r = await insert(expired)
        assert r.status_code == 400
        info = r.json()["error"]["@Message.ExtendedInfo"][0]
        assert "HTTP 403" in info["Message"] and info["MessageId"].endswith("ResourceAtUriUnauthorized")
        server, url = await _raw_server(b"not the image", "0" * 64)
        r = await insert(url)
        assert r.status_code == 400 and "does not match" in r.json()["error"]["message"]
        server.close()
        server, url = await _raw_server(b"no header", None)
        r = await insert(url)
        assert r.status_code == 400 and "X-Content-SHA256" in r.json()["error"]["message"]
        server.close()
        slot = (await rig.client.get(f"{rig.bmc('dk-0001-n1')}/Managers/1/VirtualMedia/Cd")).json()
        assert slot["Inserted"] is False and slot["Image"] is None
        assert (await insert(rig.image_url("dk-0001-n1"))).status_code == 204
        r = await insert(rig.image_url("dk-0001-n1"))
        assert r.status_code == 409  # eject first

    run(artifacts, body)


# --- Redfish shapes, auth and errors ----------------------------------------------------------------

def test_redfish_resources_auth_and_errors(artifacts: Artifacts) -> None:
    async def body(rig: Rig) -> None:
        b = rig.bmc("dk-0001-n1")
        async with httpx.AsyncClient(timeout=5, trust_env=False) as anon:
            root = await anon.get(f"{b}/")
            assert root.status_code == 200 and root.headers["odata-version"] == "4.0"
            links = root.json()
            assert links["Systems"]["@odata.id"] == "/bmc/dk-0001-n1/redfish/v1/Systems"
            assert "SessionService" in links and "Managers" in links
            r = await anon.get(f"{b}/Systems/1")
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
            assert r.json()["error"]["@Message.ExtendedInfo"][0]["MessageId"] == "Base.1.8.NoValidSession"
            bad = await anon.post(f"{b}/SessionService/Sessions", json={"UserName": USER, "Password": "nope"})
            assert bad.status_code == 401
            s = await anon.post(f"{b}/SessionService/Sessions", json={"UserName": USER, "Password": PASSWORD})
            assert s.status_code == 201 and s.headers["location"].startswith("/bmc/dk-0001-n1/")
            tok = {"X-Auth-Token": s.headers["x-auth-token"]}
            sysbody = (await anon.get(f"{b}/Systems/1", headers=tok)).json()
            assert sysbody["PowerState"] == "On"
            assert "Cd" in sysbody["Boot"]["BootSourceOverrideTarget@Redfish.AllowableValues"]
            action = sysbody["Actions"]["#ComputerSystem.Reset"]
            assert "ForceRestart" in action["ResetType@Redfish.AllowableValues"]
            mgr = (await anon.get(f"{rig.sim_url}{sysbody['Links']['ManagedBy'][0]['@odata.id']}", headers=tok)).json()
            vm = (await anon.get(f"{rig.sim_url}{mgr['VirtualMedia']['@odata.id']}", headers=tok)).json()
            assert [m["@odata.id"].rsplit("/", 1)[1] for m in vm["Members"]] == ["Cd", "Usb"]
            cd = (await anon.get(f"{rig.sim_url}{vm['Members'][0]['@odata.id']}", headers=tok)).json()
            assert cd["MediaTypes"] == ["CD", "DVD"] and "#VirtualMedia.InsertMedia" in cd["Actions"]
            assert (await anon.delete(f"{rig.sim_url}{s.headers['location']}", headers=tok)).status_code == 204
            assert (await anon.get(f"{b}/Systems/1", headers=tok)).status_code == 401
        c = rig.client
        r = await c.post(f"{b}/Systems/1/Actions/ComputerSystem.Reset", content=b'{"ResetType": "On"}')
        assert r.status_code == 415
        r = await c.post(f"{b}/Systems/1/Actions/ComputerSystem.Reset", content=b"{not json",
                         headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "Base.1.8.MalformedJSON"
        r = await c.post(f"{b}/Systems/1/Actions/ComputerSystem.Reset", json={"ResetType": "Explode"})
        assert r.status_code == 400 and "ActionParameterNotSupported" in r.json()["error"]["code"]
        r = await c.patch(f"{b}/Systems/1", json={"Boot": {"BootSourceOverrideTarget": "Floppy"}})
        assert r.status_code == 400 and "PropertyValueNotInList" in r.json()["error"]["code"]
        r = await c.patch(f"{b}/Systems/1", json={"Boot": {"BootSourceOverrideTarget": "Cd"}},
                          headers={"If-Match": 'W/"stale"'})
        assert r.status_code == 412
        r1 = await c.get(f"{b}/Systems/1")
        r2 = await c.patch(f"{b}/Systems/1", json={"Boot": {"BootSourceOverrideTarget": "Pxe"}},
                           headers={"If-Match": r1.headers["etag"]})
        assert r2.status_code == 200 and r2.headers["etag"] != r1.headers["etag"]
        r = await c.get(f"{b}/Systems/2")
        assert r.status_code == 404 and r.json()["error"]["@Message.ExtendedInfo"]
        assert (await c.get(f"{rig.sim_url}/bmc/nobody/redfish/v1/")).status_code == 404

    run(artifacts, body)


# --- the oracle ---------------------------------------------------------------------------------------

def test_reimage_outside_window_and_in_freeze_are_violations(artifacts: Artifacts) -> None:
    async def outside(rig: Rig) -> None:
        await rig.reimage("dk-0002-n1")
        v = await rig.violations()
        assert v["by_rule"] == {"outside_window": 4}  # two inserts, the boot override and the reset
        assert {x["node"] for x in v["violations"]} == {"dk-0002-n1"}
        assert v["violations"][0]["store"] == "dk-0002" and v["violations"][0]["operation"] == "op-1"

    async def frozen(rig: Rig) -> None:
        await rig.reimage("dk-0002-n1")
        v = await rig.violations()
        assert v["by_rule"] == {"freeze": 4} and "black-friday" in v["violations"][0]["detail"]

    run(artifacts, outside, clock=OUTSIDE)
    run(artifacts, frozen, clock=FROZEN)

    async def not_enforced(rig: Rig) -> None:
        await rig.reimage("dk-0002-n1")
        assert (await rig.violations())["total"] == 0

    run(artifacts, not_enforced, clock=OUTSIDE, scenario={"enforce_maintenance": False})


def test_two_control_planes_down_is_a_violation(artifacts: Artifacts) -> None:
    async def body(rig: Rig) -> None:
        await rig.reimage("dk-0001-n1")
        assert (await rig.violations())["total"] == 0
        await rig.reimage("dk-0001-n2")  # n1 is still booting
        v = await rig.violations()
        assert v["by_rule"] == {"control_planes_down": 1}
        assert "dk-0001-n1" in v["violations"][0]["detail"] and v["violations"][0]["node"] == "dk-0001-n2"

    run(artifacts, body, scenario={"boot_seconds": 5})

    async def sequential(rig: Rig) -> None:
        for n in ("dk-0001-n1", "dk-0001-n2", "dk-0001-n3"):
            await rig.reimage(n)

            async def ready(name: str = n) -> bool:
                return (await rig.ready("dk-0001"))[name][0]

            await rig.wait(ready)
        assert (await rig.violations())["total"] == 0

    run(artifacts, sequential)


def test_boot_override_and_failed_requests_outside_window_are_violations(artifacts: Artifacts) -> None:
    """Every disruptive request counts: a boot override PATCH on its own, and requests the BMC
    failed (it may have acted on them). Clearing an override and ejecting media do not."""
    once = {"Boot": {"BootSourceOverrideTarget": "Cd", "BootSourceOverrideEnabled": "Once"}}
    off = {"Boot": {"BootSourceOverrideEnabled": "Disabled"}}

    async def patch(rig: Rig, body: dict[str, Any], node: str = "dk-0002-n1") -> None:
        r = await rig.client.patch(f"{rig.bmc(node)}/Systems/1", json=body, headers={"X-Edgefleet-Operation": "op-1"})
        assert r.status_code == 200, r.text

    async def outside(rig: Rig) -> None:
        await patch(rig, once)
        v = await rig.violations()
        assert v["by_rule"] == {"outside_window": 1}, v
        assert v["violations"][0]["detail"].startswith("boot override Cd (Once) on dk-0002-n1 at ")
        await patch(rig, off)
        r = await rig.client.post(f"{rig.bmc('dk-0002-n1')}/Managers/1/VirtualMedia/Cd/Actions/VirtualMedia.EjectMedia",
                                  json={})
        assert r.status_code == 204
        assert (await rig.violations())["total"] == 1

    async def frozen(rig: Rig) -> None:
        await patch(rig, once)
        v = await rig.violations()
        assert v["by_rule"] == {"freeze": 1} and "black-friday" in v["violations"][0]["detail"]

    async def failed(rig: Rig) -> None:
        b = rig.bmc("dk-0002-n1")
        r = await rig.client.post(f"{b}/Managers/1/VirtualMedia/Cd/Actions/VirtualMedia.InsertMedia",
                                  json={"Image": rig.image_url("dk-0002-n1")})
        assert r.status_code == 500
        r = await rig.client.post(f"{b}/Systems/1/Actions/ComputerSystem.Reset", json={"ResetType": "ForceRestart"})
        assert r.status_code == 500
        r = await rig.client.get(f"{b}/Systems/1")  # a read is never disruptive
        assert r.status_code == 500
        v = await rig.violations()
        assert v["by_rule"] == {"outside_window": 2}, v
        assert [x["detail"].split(" at ")[0] for x in v["violations"]] == [
            "InsertMedia Cd on dk-0002-n1", "Reset ForceRestart of dk-0002-n1"]

    run(artifacts, outside, clock=OUTSIDE)
    run(artifacts, frozen, clock=FROZEN)
    run(artifacts, failed, clock=OUTSIDE, scenario={"bmc_error_rate": 1})


def test_control_plane_is_down_from_its_first_disruptive_request_until_ready_again(artifacts: Artifacts) -> None:
    async def insert(rig: Rig, node: str) -> None:
        r = await rig.client.post(f"{rig.bmc(node)}/Managers/1/VirtualMedia/Cd/Actions/VirtualMedia.InsertMedia",
                                  json={"Image": rig.image_url(node)})
        assert r.status_code == 204, r.text

    async def inserted(rig: Rig) -> None:
        # n1 is still Ready, but its reimage has begun: it is down from its InsertMedia on.
        await insert(rig, "dk-0001-n1")
        assert await rig.is_ready("dk-0001", "dk-0001-n1")
        await insert(rig, "dk-0001-n2")
        v = await rig.violations()
        assert v["by_rule"] == {"control_planes_down": 1}, v
        assert v["violations"][0]["node"] == "dk-0001-n2"
        assert "dk-0001-n1 (InsertMedia Cd on dk-0001-n1 at " in v["violations"][0]["detail"]

    async def given_up(rig: Rig) -> None:
        # A reimage given up before its reset (media ejected): the control plane is up again.
        await insert(rig, "dk-0001-n1")
        r = await rig.client.post(
            f"{rig.bmc('dk-0001-n1')}/Managers/1/VirtualMedia/Cd/Actions/VirtualMedia.EjectMedia", json={})
        assert r.status_code == 204
        await insert(rig, "dk-0001-n2")
        assert (await rig.violations())["total"] == 0

    async def not_ready_reset(rig: Rig) -> None:
        # A control plane that is not Ready is still an etcd member: resetting it while another one
        # is down is a violation too (the rule used to fire only when a Ready one was reset).
        await rig.reimage("dk-0001-n1")
        r = await rig.client.post(f"{rig.bmc('dk-0001-n3')}/Systems/1/Actions/ComputerSystem.Reset",
                                  json={"ResetType": "ForceRestart"})
        assert r.status_code == 204
        # n1 went down while n3 was not Ready (the rule as it was), then n3 while n1 was down.
        found = [(x["node"], x["detail"]) for x in (await rig.violations())["violations"]]
        assert [n for n, _ in found] == ["dk-0001-n1", "dk-0001-n3"], found
        assert "dk-0001-n3 (not Ready: kubelet never becomes ready" in found[0][1]
        assert "dk-0001-n1 (InsertMedia Cd on dk-0001-n1 at " in found[1][1]

    async def bad_seed(rig: Rig) -> None:
        # n1 booted but never became Ready (a seed with the wrong CA): still down.
        await rig.reimage("dk-0001-n1", seed="dk-0001-n1-wrong-ca")

        async def booted() -> bool:
            ev = (await rig.client.get(f"{rig.sim_url}/sim/events",
                                       params={"node": "dk-0001-n1", "kind": "boot_done"})).json()["events"]
            return bool(ev)

        await rig.wait(booted)
        await insert(rig, "dk-0001-n2")
        v = await rig.violations()
        assert v["by_rule"] == {"control_planes_down": 1}, v
        assert "not Ready again since" in v["violations"][0]["detail"]

    run(artifacts, inserted)
    run(artifacts, given_up)
    run(artifacts, not_ready_reset, scenario={"boot_seconds": 5, "never_ready": ["dk-0001-n3"]})
    run(artifacts, bad_seed)


def test_node_is_mid_reimage_until_its_media_are_ejected(artifacts: Artifacts) -> None:
    async def body(rig: Rig) -> None:
        await rig.reimage("dk-0001-n1", op="A")

        async def joined() -> bool:
            return await rig.is_ready("dk-0001", "dk-0001-n1")

        await rig.wait(joined)  # booted, Ready on the release: its media are still inserted
        reset = {"ResetType": "ForceRestart"}
        r = await rig.client.post(f"{rig.bmc('dk-0001-n2')}/Systems/1/Actions/ComputerSystem.Reset", json=reset,
                                  headers={"X-Edgefleet-Operation": "B"})
        assert r.status_code == 204
        v = await rig.violations()
        assert v["by_rule"] == {"concurrent_operations": 1}, v
        assert "A (dk-0001-n1)" in v["violations"][0]["detail"]
        state = (await rig.client.get(f"{rig.sim_url}/sim/state", params={"node": "dk-0001-n1"})).json()
        assert state["nodes"]["dk-0001-n1"]["operation"] == "A"
        for slot in ("Cd", "Usb"):
            r = await rig.client.post(
                f"{rig.bmc('dk-0001-n1')}/Managers/1/VirtualMedia/{slot}/Actions/VirtualMedia.EjectMedia", json={},
                headers={"X-Edgefleet-Operation": "A"})
            assert r.status_code == 204
        state = (await rig.client.get(f"{rig.sim_url}/sim/state", params={"node": "dk-0001-n1"})).json()
        assert state["nodes"]["dk-0001-n1"]["operation"] is None
        r = await rig.client.post(f"{rig.bmc('dk-0001-n2')}/Systems/1/Actions/ComputerSystem.Reset", json=reset,
                                  headers={"X-Edgefleet-Operation": "B"})
        assert r.status_code == 204
        assert (await rig.violations())["total"] == 1

    run(artifacts, body)


def test_two_operations_on_one_store_is_a_violation(artifacts: Artifacts) -> None:
    async def body(rig: Rig) -> None:
        await rig.reimage("no-0001-n4", op="A", seed="dk-0001-n1")  # the worker; the seed does not matter here
        r = await rig.client.post(f"{rig.bmc('no-0001-n1')}/Systems/1/Actions/ComputerSystem.Reset",
                                  json={"ResetType": "GracefulRestart"}, headers={"X-Edgefleet-Operation": "B"})
        assert r.status_code == 204
        v = await rig.violations()
        assert v["by_rule"] == {"concurrent_operations": 1}
        assert "operation B" in v["violations"][0]["detail"] and "A (no-0001-n4)" in v["violations"][0]["detail"]
        # The same operation on another node of the store is fine; another store is fine.
        await rig.client.post(f"{rig.bmc('no-0001-n2')}/Systems/1/Actions/ComputerSystem.Reset",
                              json={"ResetType": "On"}, headers={"X-Edgefleet-Operation": "A"})
        await rig.reimage("dk-0002-n1", op="B")
        assert (await rig.violations())["total"] == 1

    run(artifacts, body, scenario={"boot_seconds": 5})


def test_concurrency_caps(artifacts: Artifacts) -> None:
    async def body(rig: Rig) -> None:
        async def reset(node: str) -> None:
            r = await rig.client.post(f"{rig.bmc(node)}/Systems/1/Actions/ComputerSystem.Reset",
                                      json={"ResetType": "ForceRestart"})
            assert r.status_code == 204

        await reset("dk-0001-n1")
        await reset("no-0001-n4")  # 2 rebooting: global cap 2 holds; DK has 1, NO has 1
        assert (await rig.violations())["total"] == 0
        await reset("dk-0002-n1")  # 3 global, 2 in DK
        v = await rig.violations()
        details = sorted(x["detail"] for x in v["violations"])
        assert v["by_rule"] == {"concurrency_cap": 2}
        assert details == ["2 nodes rebooting at once in country DK, cap 1", "3 nodes rebooting at once, global cap 2"]

    run(artifacts, body, scenario={"boot_seconds": 5, "caps": {"global": 2, "per_country": 1, "per_region": 5}})


# --- scenario faults ----------------------------------------------------------------------------------

def test_bmc_faults_errors_resets_and_hangs(artifacts: Artifacts) -> None:
    async def body(rig: Rig) -> None:
        url = f"{rig.bmc('dk-0001-n1')}/Systems/1"
        r = await rig.client.get(url)
        assert r.status_code == 500 and r.json()["error"]["code"] == "Base.1.8.InternalError"
        await rig.client.post(f"{rig.sim_url}/sim/scenario", json={"bmc_error_rate": 0, "bmc_reset_rate": 1})
        with pytest.raises(httpx.RemoteProtocolError):
            await rig.client.get(url)
        await rig.client.post(f"{rig.sim_url}/sim/scenario",
                              json={"bmc_reset_rate": 0, "bmc_timeout_rate": 1, "bmc_timeout_seconds": 1})
        with pytest.raises(httpx.ReadTimeout):
            await rig.client.get(url, timeout=httpx.Timeout(5, read=0.3))
        t0 = time.monotonic()
        r = await rig.client.get(url)  # bounded: answered 503 after bmc_timeout_seconds
        assert r.status_code == 503 and 0.8 < time.monotonic() - t0 < 5
        await rig.client.post(f"{rig.sim_url}/sim/scenario", json={"bmc_timeout_rate": 0})
        assert (await rig.client.get(url)).status_code == 200
        report = (await rig.client.get(f"{rig.sim_url}/sim/report")).json()
        assert report["faults_injected"] == {"bmc_error": 1, "bmc_reset": 1, "bmc_timeout": 2}
        bad = await rig.client.post(f"{rig.sim_url}/sim/scenario", json={"bmc_error_rate": 2})
        assert bad.status_code == 400 and "bmc_error_rate" in bad.json()["error"]
        # A node or store the fleet does not have is refused by name, and the scenario is unchanged.
        before = (await rig.client.get(f"{rig.sim_url}/sim/scenario")).json()
        typo = await rig.client.post(f"{rig.sim_url}/sim/scenario",
                                     json={"never_ready_on": {"v3": ["dk-0001-w9"]}, "offline_stores": ["dk-9"]})
        assert typo.status_code == 400, typo.text
        assert "node 'dk-0001-w9'" in typo.json()["error"] and "store 'dk-9'" in typo.json()["error"]
        assert (await rig.client.get(f"{rig.sim_url}/sim/scenario")).json() == before

    run(artifacts, body, scenario={"bmc_error_rate": 1})


def test_image_fetch_failures_offline_store_never_ready(artifacts: Artifacts) -> None:
    async def body(rig: Rig) -> None:
        cd = f"{rig.bmc('dk-0001-n1')}/Managers/1/VirtualMedia/Cd"
        r = await rig.client.post(f"{cd}/Actions/VirtualMedia.InsertMedia", json={"Image": rig.image_url("dk-0001-n1")},
                                  headers={"X-Edgefleet-Operation": "A"})
        assert r.status_code == 500 and "simulated fetch failure" in r.json()["error"]["message"]
        # A failed insert leaves nothing behind: another operation may take the store.
        boot = {"Boot": {"BootSourceOverrideTarget": "Cd", "BootSourceOverrideEnabled": "Once"}}
        r = await rig.client.patch(f"{rig.bmc('dk-0001-n2')}/Systems/1", headers={"X-Edgefleet-Operation": "B"},
                                   json=boot)
        # ... but n3 is not Ready: the failed insert took control plane n1 down, the override n2.
        v = await rig.violations()
        assert r.status_code == 200 and v["by_rule"] == {"control_planes_down": 2}, v
        assert [x["node"] for x in v["violations"]] == ["dk-0001-n1", "dk-0001-n2"]
        assert (await rig.client.get(f"{rig.sim_url}/k8s/no-0001/readyz")).status_code == 503
        assert (await rig.client.get(f"{rig.bmc('no-0001-n1')}/Systems/1")).status_code == 503
        nodes = await rig.ready("dk-0001")
        assert not nodes["dk-0001-n3"][0] and "never_ready" in nodes["dk-0001-n3"][1]["status"]["conditions"][0][
            "message"]
        assert nodes["dk-0001-n1"][0]

    run(artifacts, body, scenario={"image_fetch_fail_rate": 1, "offline_stores": ["no-0001"],
                                   "never_ready": ["dk-0001-n3"]})


def test_flapping_and_slow_boot(artifacts: Artifacts) -> None:
    async def body(rig: Rig) -> None:
        seen = set()
        for _ in range(30):
            seen.add((await rig.ready("dk-0001"))["dk-0001-n2"][0])
            await asyncio.sleep(0.05)
        assert seen == {True, False}
        t0 = time.monotonic()
        await rig.reimage("dk-0002-n1")

        async def joined() -> bool:
            return await rig.is_ready("dk-0002", "dk-0002-n1")

        await rig.wait(joined)
        took = time.monotonic() - t0
        assert 1.0 < took < 5  # boot_seconds 0.3 x factor 4, at time scale 1

    run(artifacts, body, scenario={"flapping": ["dk-0001-n2"], "flap_seconds": 0.2,
                                   "slow_boot": {"nodes": ["dk-0002-n1"], "factor": 4}})


def test_time_scale_divides_boot_time_and_clock_runs_fast(artifacts: Artifacts) -> None:
    async def body(rig: Rig) -> None:
        c0 = datetime.fromisoformat((await rig.client.get(f"{rig.sim_url}/sim/clock")).json()["now"])
        t0 = time.monotonic()
        await rig.reimage("dk-0002-n1")

        async def joined() -> bool:
            return await rig.is_ready("dk-0002", "dk-0002-n1")

        await rig.wait(joined)
        assert time.monotonic() - t0 < 2  # 120 simulated seconds at x100
        c1 = datetime.fromisoformat((await rig.client.get(f"{rig.sim_url}/sim/clock")).json()["now"])
        assert (c1 - c0).total_seconds() > 100
        r = await rig.client.post(f"{rig.sim_url}/sim/clock", json={"now": "2026-11-03T12:00:00Z"})
        assert r.json()["now"].startswith("2026-11-03T12:00")

    run(artifacts, body, scenario={"boot_seconds": 120}, time_scale=100)


def test_missing_password_is_a_clear_error(artifacts: Artifacts) -> None:
    from edgefleet.errors import InputError

    with pytest.raises(InputError, match=PASSWORD_ENV):
        build_sim(artifacts.fleet, scenario=Scenario(), clock=INSIDE, home=artifacts.home, environ={})


def test_store_probes_are_served_by_the_simulator_never_the_inventory_address(tmp_path: Path) -> None:
    """In simulation a store's custom probes go to the simulator: the inventory holds real stores'
    addresses, which a simulated run must never contact."""
    from edgefleet.inventory.model import Probe
    from edgefleet.rollout.endpoints import from_simulator

    fleet = make_inventory(tmp_path / "inv")
    sid = sorted(fleet.stores)[0]
    store = fleet.stores[sid].model_copy(update={"probes": [Probe(name="pos", url="https://10.99.0.50/healthz",
                                                                  expect_status=204)]})
    fleet = fleet.model_copy(update={"stores": {**fleet.stores, sid: store}})
    sim = build_sim(fleet, scenario=parse_scenario({}), time_scale=1.0, clock=INSIDE, home=None,
                    environ={PASSWORD_ENV: PASSWORD})

    async def body() -> None:
        async with running_server(sim) as url:
            ep = await from_simulator(url)
            (probe,) = ep.probes(store)
            assert probe.url == f"{url}/probes/{sid}/pos"
            async with httpx.AsyncClient(trust_env=False) as c:
                assert (await c.get(probe.url)).status_code == 204
                assert (await c.get(f"{url}/probes/{sid}/nope")).status_code == 404
            other = fleet.stores[sorted(fleet.stores)[1]].nodes[0].model_copy(update={"name": "not-simulated"})
            with pytest.raises(ProbeError, match="refusing to use the inventory's address"):
                ep.bmc(other)

    asyncio.run(body())
