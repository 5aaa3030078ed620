"""edgefleet: run fleets of edge Talos Kubernetes clusters."""

import os

# gRPC (the Talos API client) registers fork handlers that, when another thread is inside gRPC at
# the moment ansible-runner forks a hook's process, leave the child with a broken epoll file
# descriptor ("epoll_wait error: Bad file descriptor"). edgefleet never uses gRPC in a forked
# child, so the handlers are off; it must be set before grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
