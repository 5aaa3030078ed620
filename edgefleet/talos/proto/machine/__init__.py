"""Generated from ``machine.proto``: the Talos machine service's messages (``machine_pb2``)
and its gRPC client (``machine_pb2_grpc``). Do not edit: regenerate with
``python -m edgefleet.talos.proto.generate``."""
