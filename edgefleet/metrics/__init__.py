"""Prometheus metrics of the fleet, read from the ledger at scrape time: ``tally`` folds the event
log (pure), ``collector`` reads the state store for ``edgefleet serve``'s ``/metrics``."""
