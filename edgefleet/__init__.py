"""edgefleet: run fleets of edge Talos Kubernetes clusters from plain Python (Prefect flows in flows/).
Pure core: inventory model, plan, gates, windows, seed and Talos config rendering, health verdicts.
Adapters, one per outside system: redfish/, health/ (Kubernetes), seeds/ (ISOs, server), state/, releases/."""

import os

# gRPC (the Talos API client) registers fork handlers that, when another thread is inside gRPC at
# the moment ansible-runner forks a hook's process, leave the child with a broken epoll file
# descriptor ("epoll_wait error: Bad file descriptor"). edgefleet never uses gRPC in a forked
# child, so the handlers are off; it must be set before grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
