"""The fleet simulator: one asyncio HTTP server on 127.0.0.1 playing every node's BMC (Redfish) and
every store's Kubernetes API, with scenario faults, a simulated clock, an event log and a safety
oracle. It consumes real artifacts: InsertMedia downloads the release image and seed for real,
and a boot reads them (``edgefleet.releases.image``, ``edgefleet.seeds.iso``).

Modules: ``scenario`` (faults and caps), ``boot`` (what media tell a node; may it join), ``media``
(downloads), ``oracle`` (safety rules), ``fleet`` (state and actions), ``redfish`` and ``k8s``
(resources), ``server`` (HTTP), ``build`` (assembly from files).
"""
