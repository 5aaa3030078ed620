"""Export the fleet as an Ansible dynamic inventory (the script protocol's ``--list`` JSON).

Pure: a ``Fleet`` in, a JSON-ready dict out. Hosts are nodes; every store is a group
(``store_<id>``), children of ``country_<cc>``, ``region_<name>``, ``ring_<name>`` and, for
canaries, ``canary``; nodes are also grouped by role (``controlplane``, ``worker``). Talos nodes
have no SSH and no Python, so every host uses ``ansible_connection: local``: playbooks run on
the controller and talk to the store's systems over their APIs.
"""

from __future__ import annotations

import re
from typing import Any

from edgefleet.inventory.model import Fleet

_BAD = re.compile(r"[^A-Za-z0-9_]")


def group_name(name: str) -> str:
    """Ansible group names are identifiers: anything else becomes '_'."""
    return _BAD.sub("_", name)


def render_ansible_inventory(fleet: Fleet) -> dict[str, Any]:
    groups: dict[str, dict[str, Any]] = {}
    hostvars: dict[str, dict[str, Any]] = {}

    def child(parent: str, kid: str) -> None:
        g = groups.setdefault(parent, {"children": [], "hosts": []})
        if kid not in g["children"]:
            g["children"].append(kid)

    for s in fleet.stores.values():
        sg = group_name(f"store_{s.id}")
        groups[sg] = {"hosts": [n.name for n in s.nodes], "children": [],
                      "vars": {"edgefleet_store": s.id, "edgefleet_store_name": s.name,
                               "edgefleet_timezone": s.timezone, "edgefleet_cluster": s.cluster.name,
                               "edgefleet_endpoint": s.endpoint}}
        for g in s.all_groups:
            child(group_name(g), sg)
        for n in s.nodes:
            groups.setdefault(n.role.value, {"children": [], "hosts": []})["hosts"].append(n.name)
            hostvars[n.name] = {
                "ansible_host": str(n.ip),
                "ansible_connection": "local",
                "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                "edgefleet_store": s.id,
                "edgefleet_role": n.role.value,
                "edgefleet_mac": n.mac,
                "edgefleet_country": s.country,
                "edgefleet_region": s.region,
                "edgefleet_ring": s.ring,
                "edgefleet_bmc_url": n.bmc.url if n.bmc else None,
            }
    out: dict[str, Any] = {"_meta": {"hostvars": hostvars}}
    out["all"] = {"children": [*sorted(g for g in groups if not g.startswith("store_")), "ungrouped"]}
    for name, grp in groups.items():
        out[name] = {k: grp[k] for k in ("hosts", "children", "vars") if grp.get(k)}
    return out


def to_static_inventory(script_json: dict[str, Any]) -> dict[str, Any]:
    """Convert the script-protocol JSON into Ansible's static YAML inventory layout (``all:
    children: ...``), for teams that keep a generated inventory file instead of a script."""
    hostvars: dict[str, Any] = script_json["_meta"]["hostvars"]

    def group(name: str) -> dict[str, Any]:
        g = script_json.get(name, {})
        out: dict[str, Any] = {}
        if g.get("hosts"):
            out["hosts"] = {h: (hostvars.get(h) if name.startswith("store_") else None) for h in g["hosts"]}
        if g.get("vars"):
            out["vars"] = g["vars"]
        if g.get("children"):
            out["children"] = {c: group(c) for c in g["children"]}
        return out

    return {"all": {"children": {c: group(c) for c in script_json["all"]["children"] if c != "ungrouped"}}}
