"""Evaluate host patterns with Ansible's own inventory manager, one pattern per line, as a server.

    python ansible_patterns_driver.py INVENTORY.yml

Reads JSON strings (patterns) from stdin, one per line, and answers each with one line of JSON: the
host names Ansible selects, in its order. ``InventoryManager.list_hosts`` is what ``ansible PATTERN
--list-hosts`` calls; running it in one process answers a pattern in milliseconds where the command
costs a second or two of start-up, so a property test can ask hundreds.
"""

from __future__ import annotations

import json
import sys

from ansible.inventory.manager import InventoryManager  # type: ignore[import-untyped]
from ansible.parsing.dataloader import DataLoader  # type: ignore[import-untyped]


def main() -> None:
    inventory = InventoryManager(loader=DataLoader(), sources=[sys.argv[1]])
    print(json.dumps({"hosts": len(inventory.hosts)}), flush=True)
    for line in sys.stdin:
        pattern = json.loads(line)
        inventory.clear_pattern_cache()
        print(json.dumps([str(h) for h in inventory.list_hosts(pattern)]), flush=True)


if __name__ == "__main__":
    main()
