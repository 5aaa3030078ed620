"""The Talos API messages: ``.proto`` files written from the public Talos API reference and the
Python modules generated from them (committed; a test checks they match). Regenerate with
``python -m edgefleet.talos.proto.generate`` (needs grpcio-tools)."""
