"""edgefleet benchmarks: each compares edgefleet against the tool a user would otherwise run, in
the same process run, and reports ratios (these machines are noisy: absolute seconds vary)."""
