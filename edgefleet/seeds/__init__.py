"""NoCloud seeds for Talos nodes.

* ``render``: what goes on a node's seed (network-config v2, meta-data, the Talos machine config
  as user-data), pure;
* ``iso``: the seed ISO itself (deterministic bytes, atomic writes, reading back);
* ``build``: incremental builds of a fleet's seeds under an output directory.
"""
