"""The Talos API messages edgefleet speaks: ``.proto`` files written from the public Talos API
reference (``common/common.proto``, ``machine/machine.proto``) and the Python modules generated
from them (``*_pb2.py``, ``*_pb2.pyi``, ``*_pb2_grpc.py``), committed so that users need no code
generation. Regenerate with ``python -m edgefleet.talos.proto.generate`` (needs grpcio-tools);
a test checks that the committed modules are what the ``.proto`` files generate."""
