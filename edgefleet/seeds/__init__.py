"""NoCloud seeds for Talos nodes: ``render`` (network-config, meta-data, user-data; pure), ``iso``
(deterministic seed ISOs, atomic writes, reading back), ``build`` (incremental fleet builds),
``server`` and ``netseed`` (serving seeds over HTTP with signed URLs, nocloud-net)."""
