"""Generated from ``common.proto``: the Talos API's shared messages (``common_pb2``) and
their gRPC stubs (``common_pb2_grpc``). Do not edit: regenerate with
``python -m edgefleet.talos.proto.generate``."""
