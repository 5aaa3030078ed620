"""Talos Linux: ``config`` (machine-config rendering, pure), ``certs`` and ``clientconfig`` (client
certificates, talosconfig and kubeconfig), ``api`` (the Talos API client over gRPC), ``inband``
(the in-band reimage through that API), ``proto`` (the API's messages)."""
