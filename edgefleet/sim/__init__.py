"""The fleet simulator on 127.0.0.1: every node's BMC (Redfish), every store's Kubernetes and Talos
API, with scenario faults, a simulated clock, an event log and a safety oracle (``oracle``). It
consumes real artifacts: release images and seeds are downloaded and read back for real."""
