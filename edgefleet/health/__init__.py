"""Store health: ``cluster`` decides from what a store's Kubernetes API said (pure, no I/O);
``probes`` is the Kubernetes adapter and the custom HTTP probes; ``storeapi`` reads a rollout's
stores. Names are loaded on first use, so importing ``cluster`` imports no HTTP client."""

from __future__ import annotations

import importlib
from typing import Any

# The names are loaded on first use (PEP 562), so that importing the pure ``cluster`` module does
# not import the HTTP adapter (and httpx) through this package.
_HOME = {
    "CONTROL_PLANE_LABEL": "cluster",
    "ClientCert": "probes",
    "ClusterAccess": "probes",
    "ClusterSnapshot": "cluster",
    "ClusterVerdict": "cluster",
    "Expectation": "cluster",
    "KeyLoader": "probes",
    "KubeApiClient": "probes",
    "NodeStatus": "cluster",
    "ProbeResult": "cluster",
    "StoreHealth": "cluster",
    "check_store": "probes",
    "evaluate_cluster": "cluster",
    "evaluate_probe": "cluster",
    "expectation_for_store": "cluster",
    "fetch_cluster": "probes",
    "parse_nodes": "cluster",
    "run_probe": "probes",
    "run_probes": "probes",
}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
