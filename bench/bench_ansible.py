"""The same rollout as an Ansible rolling update, against the same simulator, in the same run.

A subset of stores (a generated fleet, set up as in ``bench.bench_rollout``) is rolled out to one
release through edgefleet's engine, then to a second release by ``bench/ansible/rolling_update.yml``
run through ansible-runner with ``forks`` equal to the concurrency: the same waves (as ``serial``
batches, hosts in the plan's order), each store's nodes one at a time, per node the Redfish sequence
of ``edgefleet.redfish.driver.reimage_sequence`` with ``uri`` tasks (read the media slots, eject
stale media, insert the boot image and the seed, boot once from CD, reset, wait for power On), then
the store's Kubernetes API polled until the node is Ready on the release, then the media ejected;
a ``/readyz`` gate per store. Seeds are built and served beforehand for Ansible (not timed); the
engine builds its own during its run. Both runs are checked on the simulator: one joined media boot
per node, every node on the release, zero oracle violations.

ansible-runner always gets a ``private_data_dir`` and a static inventory file (its inventory
helpers cost a minute and hundreds of MB of event files at fleet size), and the venv's Python as
``ansible_python_interpreter``.

    python -m bench.bench_ansible [--stores 24] [--concurrency 500] [--boot-real 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.bench_rollout import (
    PASSWORD,
    Knobs,
    Simulator,
    _run_child,
    check_run,
    make_home,
    make_inventory,
    workdir,
)
from bench.common import write_result

PLAYBOOKS = Path(__file__).resolve().parent / "ansible"


class ThreadedSeedServer:
    """edgefleet's seed server on its own event loop in a thread (ansible-runner blocks this one)."""

    def __init__(self, home: Path):
        self.home = home
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.server: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="seed-server", daemon=True)

    def _main(self) -> None:
        from edgefleet.seeds.server import SeedServer

        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            async with SeedServer(self.home, token_ttl_s=6 * 3600) as srv:
                self.server = srv
                self._ready.set()
                await self._stop.wait()

        try:
            asyncio.run(serve())
        except BaseException as e:  # reported by __enter__
            self._error = e
            self._ready.set()

    def __enter__(self) -> Any:
        self._thread.start()
        if not self._ready.wait(60) or self.server is None:
            raise RuntimeError(f"the seed server did not start: {self._error!r}")
        return self.server

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


def ansible_inventory(fleet: Any, waves: list[list[str]], endpoints: dict[str, Any], seeds: Any, home: Path,
                      image_rel: str, seed_dir: Path) -> dict[str, Any]:
    """One host per store, in the plan's order; its nodes with BMC and media URLs as host vars."""
    from edgefleet.seeds.build import seed_path

    now = datetime.now(UTC)
    hosts: dict[str, Any] = {}
    for sid in (s for w in waves for s in w):
        store = fleet.stores[sid]
        nodes = []
        for n in store.nodes:
            seed_rel = seed_path(seed_dir, sid, n.name).resolve().relative_to(home.resolve()).as_posix()
            nodes.append({"name": n.name, "role": n.role.value, "bmc": endpoints["nodes"][n.name],
                          "image_url": seeds.url_for(image_rel, n.name, now),
                          "seed_url": seeds.url_for(seed_rel, n.name, now)})
        # Control planes first, as the engine orders them.
        nodes.sort(key=lambda x: x["role"] != "controlplane")
        hosts[sid] = {"nodes": nodes, "k8s_url": endpoints["stores"][sid]}
    return {"stores": {"hosts": hosts}}


def run_ansible(fleet: Any, waves: list[list[str]], sim: Simulator, home: Path, state: str, release: str,
                knobs: Knobs, work: Path) -> dict[str, Any]:
    """Seeds for ``release`` (untimed), then the playbook through ansible-runner (timed)."""
    import ansible_runner

    from edgefleet.releases.catalog import ReleaseCatalog, verify_artifact
    from edgefleet.seeds.build import build_seeds
    from edgefleet.state.db import create_state_engine

    engine = create_state_engine(state)
    try:
        rel = ReleaseCatalog(engine).get(release)
    finally:
        engine.dispose()
    image_rel = verify_artifact(rel).resolve().relative_to(home.resolve()).as_posix()
    seed_dir = home / "seeds" / "ansible" / release
    ref = rel.ref()
    stores = [s for w in waves for s in w]
    build_seeds(fleet, stores, None, ref, home, seed_dir, now=datetime.now(UTC), existing_clusters=stores)
    endpoints = sim.get("/sim/endpoints")
    private = work / "runner"
    (private / "project").mkdir(parents=True)
    (private / "inventory").mkdir()
    for f in PLAYBOOKS.glob("*.yml"):
        shutil.copy(f, private / "project" / f.name)
    n_nodes = sum(len(fleet.stores[s].nodes) for s in stores)
    with ThreadedSeedServer(home) as seeds:
        inv = ansible_inventory(fleet, waves, endpoints, seeds, home, image_rel, seed_dir)
        (private / "inventory" / "hosts.json").write_text(json.dumps(inv))
        node_user = next(n.bmc.credentials.username for s in fleet.stores.values() for n in s.nodes if n.bmc)
        extravars = {"batches": [len(w) for w in waves if w], "release": release, "operation": f"ansible-{release}",
                     "bmc_user": node_user, "bmc_password": PASSWORD, "poll_s": knobs.poll_s,
                     "poll_retries": int(knobs.node_timeout_s / knobs.poll_s), "ansible_connection": "local",
                     "ansible_python_interpreter": sys.executable}
        venv_bin = str(Path(sys.executable).parent)
        envvars = {"PATH": f"{venv_bin}:{os.environ.get('PATH', '')}", "ANSIBLE_HOST_KEY_CHECKING": "False",
                   "ANSIBLE_INVENTORY_ENABLED": "yaml,ini,auto,script", "ANSIBLE_NOCOLOR": "1",
                   "ANSIBLE_PYTHON_INTERPRETER": sys.executable, "ANSIBLE_DEPRECATION_WARNINGS": "False",
                   "no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1"}
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        r = ansible_runner.run(private_data_dir=str(private), playbook="rolling_update.yml",
                               inventory=str(private / "inventory" / "hosts.json"), forks=knobs.concurrency,
                               extravars=extravars, envvars=envvars, quiet=True, timeout=3600)
        wall = time.perf_counter() - t0
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (children.ru_utime - children0.ru_utime) + (children.ru_stime - children0.ru_stime) + \
            (time.process_time() - cpu0)
    if r.status != "successful" or r.rc != 0:
        tail = (private / "artifacts").glob("*/stdout")
        out = "\n".join(p.read_text()[-4000:] for p in tail)
        raise RuntimeError(f"ansible-playbook ended {r.status} (rc {r.rc}):\n{out}")
    tasks = sum(1 for e in r.events if e.get("event") in ("runner_on_ok", "runner_item_on_ok", "runner_retry"))
    return {"wall_s": wall, "cpu_s": cpu, "nodes": n_nodes, "module_results": tasks}


def run(stores: int = 24, concurrency: int = 500, boot_real: float = 8.0, poll: float = 1.0
        ) -> list[dict[str, object]]:
    from edgefleet.inventory.load import load_fleet

    knobs = Knobs(concurrency=concurrency, boot_real_s=boot_real, poll_s=poll)
    with workdir("bench-ansible-") as work:
        inventory = make_inventory(work / "inventory", stores)
        home = work / "home"
        state = make_home(home, inventory, ["bench-a", "bench-b"])
        fleet = load_fleet(inventory)
        n_nodes = fleet.node_count
        sim = Simulator(inventory, home, knobs, work)
        try:
            eng = _run_child("engine", inventory, home, state, sim, "bench-a", knobs, work)
            joined, waves, _ = check_run(sim, state, eng["rollout"], "bench-a", n_nodes, 0)
            print(f"ansible: edgefleet engine {eng['wall_s']:.1f} s, {eng['cpu_s']:.1f} CPU-s", flush=True)
            ans = run_ansible(fleet, waves, sim, home, state, "bench-b", knobs, work)
            report = sim.get("/sim/report")
            got = int(report["boots"].get("media_joined", 0)) - joined
            if got != n_nodes or report["releases"] != {"bench-b": n_nodes}:
                raise RuntimeError(f"after the playbook: {got} joined media boots for {n_nodes} nodes, "
                                   f"releases {report['releases']}")
            if report["violations"]["total"] != 0:
                raise RuntimeError(f"the oracle found violations in the Ansible run: {report['violations']['by_rule']}")
            print(f"ansible: playbook {ans['wall_s']:.1f} s, {ans['cpu_s']:.1f} CPU-s", flush=True)
        finally:
            sim.stop()
    e_rate, a_rate = n_nodes / eng["wall_s"], n_nodes / ans["wall_s"]
    e_cpu, a_cpu = eng["cpu_s"] / n_nodes * 1000, ans["cpu_s"] / n_nodes * 1000
    sizes = "/".join(str(len(w)) for w in waves if w)
    rows: list[dict[str, object]] = [
        {"measure": f"rolling update of {stores} stores / {n_nodes} nodes (waves {sizes}, boot {boot_real:g} s, "
                    f"concurrency = forks = {concurrency}): nodes per second, edgefleet vs ansible-runner + uri",
         "edgefleet": round(e_rate, 3), "baseline": round(a_rate, 3), "ratio": f"{e_rate / a_rate:.1f}x",
         "goal": ">= 10x", "met": e_rate / a_rate >= 10},
        {"measure": "orchestrator CPU per node (ms): edgefleet process vs ansible-playbook and its forks",
         "edgefleet": round(e_cpu, 1), "baseline": round(a_cpu, 1), "ratio": f"{a_cpu / e_cpu:.1f}x less"},
        {"measure": "wall (s): edgefleet vs Ansible", "edgefleet": round(eng["wall_s"], 1),
         "baseline": round(ans["wall_s"], 1)},
    ]
    for r in rows:
        print("ansible:", r)
    write_result("ansible", rows, notes=(
        "Same simulator, same subset, same waves and poll interval, in one run; a 2-core machine shared with other "
        "work. Ansible's seeds were built before its run (not timed); edgefleet builds its own during the run."))
    return rows


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_ansible", description=__doc__.split("\n\n")[0])
    p.add_argument("--stores", type=int, default=24)
    p.add_argument("--concurrency", type=int, default=500)
    p.add_argument("--boot-real", type=float, default=8.0)
    p.add_argument("--poll", type=float, default=1.0)
    a = p.parse_args(argv)
    run(a.stores, a.concurrency, a.boot_real, a.poll)


if __name__ == "__main__":
    main(sys.argv[1:])
