"""Client configuration files for a store: a talosconfig (for ``talosctl``) and a kubeconfig.

Pure: the certificates come in (``edgefleet.talos.certs``), bytes come out; writing the files is
the CLI's job.

* talosconfig: the format ``talosctl`` reads (``context`` + ``contexts.<name>`` with
  ``endpoints``, ``nodes``, ``ca``, ``crt``, ``key``, each PEM base64-encoded). The context is
  named after the store; ``endpoints`` are the control planes' addresses (not the VIP: the
  VIP only answers while etcd is healthy, which is when one needs talosctl least); ``nodes`` is
  the first control plane only, so a bare ``talosctl reboot`` never hits every node at once.
* kubeconfig: one cluster (server = the store's Kubernetes endpoint, CA = its Kubernetes CA), one
  user with a client certificate, one context, all named after the store.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import yaml

from edgefleet.inventory.model import Store
from edgefleet.talos.certs import IssuedClientCert

__all__ = ["render_kubeconfig", "render_talosconfig", "talos_endpoints"]


def _b64(pem: bytes) -> str:
    return base64.b64encode(pem).decode("ascii")


def _dump(doc: dict[str, Any]) -> bytes:
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, width=1 << 16).encode("utf-8")


def talos_endpoints(store: Store) -> list[str]:
    """The control planes' addresses: where talosctl connects."""
    return [str(n.ip) for n in store.control_planes]


def render_talosconfig(store: Store, cert: IssuedClientCert, *, nodes: Sequence[str] | None = None) -> bytes:
    """A talosconfig with one context named after the store. ``nodes``: the default targets
    (default: the first control plane)."""
    targets = list(nodes) if nodes is not None else talos_endpoints(store)[:1]
    return _dump({
        "context": store.id,
        "contexts": {store.id: {
            "endpoints": talos_endpoints(store),
            "nodes": targets,
            "ca": _b64(cert.ca_pem),
            "crt": _b64(cert.cert_pem),
            "key": _b64(cert.key_pem),
        }},
    })


def render_kubeconfig(store: Store, cert: IssuedClientCert, *, user: str) -> bytes:
    """A kubeconfig for the store's cluster with ``cert`` (signed by its Kubernetes CA) as ``user``."""
    name = store.id
    return _dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": store.endpoint,
                                                "certificate-authority-data": _b64(cert.ca_pem)}}],
        "users": [{"name": f"{user}@{name}", "user": {"client-certificate-data": _b64(cert.cert_pem),
                                                     "client-key-data": _b64(cert.key_pem)}}],
        "contexts": [{"name": f"{user}@{name}", "context": {"cluster": name, "user": f"{user}@{name}"}}],
        "current-context": f"{user}@{name}",
        "preferences": {},
    })
