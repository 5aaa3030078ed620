"""`make demo`: the deepest real slice of edgefleet that exists, end to end on the sample fleet,
on the embedded defaults (no server to start, nothing outside 127.0.0.1 touched)."""

from __future__ import annotations

from pathlib import Path

from edgefleet.cli import app


def _step(title: str, *args: str) -> None:
    print(f"\n=== {title}: edgefleet {' '.join(args)}", flush=True)
    try:
        app(list(args), standalone_mode=False)
    except SystemExit as e:
        if e.code:
            raise


def main() -> None:
    inventory = Path("inventory")
    _step("validate the sample inventory", "inventory", "validate", str(inventory))
    _step("the fleet by country, region and ring", "inventory", "graph", "-i", str(inventory))
    _step("one store, resolved from all layers", "inventory", "show", "dk-002", "-i", str(inventory))


if __name__ == "__main__":
    main()
