"""The fleet inventory: ``model`` (stores, nodes, windows: pydantic, pure), ``load`` (reading and
validating an Ansible-layout directory, errors naming file, line and field), ``ansible`` (the
Ansible view), ``generate`` (synthetic fleets for tests and benchmarks)."""
