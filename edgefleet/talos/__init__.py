"""Talos Linux: machine-config rendering (``config``) for edgefleet's nodes."""
