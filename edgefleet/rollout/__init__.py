"""The rollout engine: ``plan`` (waves, caps, windows; pure), ``gates`` (node, store and wave verdicts;
pure), ``ledger`` (the state store's record and locks), ``executor`` and ``operations`` (running and
starting rollouts), ``endpoints`` (where BMCs, APIs and the clock are), ``hooks`` (ansible-runner)."""
