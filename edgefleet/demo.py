"""`make demo`: the deepest real slice of edgefleet that exists, end to end on the sample fleet,
on the embedded defaults (SQLite, no server to start, nothing outside 127.0.0.1 touched).

Everything is written under ``out/demo/`` (started afresh on every run): the edgefleet home with
cluster secrets, releases and the SQLite state store, and the seed ISOs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

from edgefleet.cli import app
from edgefleet.errors import EdgefleetError

OUT = Path("out/demo")
TALOS_VERSION = "v1.12.6"


def _step(title: str, *args: str) -> None:
    print(f"\n=== {title}\n$ edgefleet {' '.join(args)}", flush=True)
    try:
        app(list(args), standalone_mode=False)
    except EdgefleetError as e:
        print(f"demo step failed: {e}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
    except SystemExit as e:
        if e.code:
            raise


def _installer_image(extension: str) -> str:
    """The installer reference the Talos Image Factory would return for a schematic with this
    extension: its schematic id is the sha256 of the schematic document."""
    schematic = f"customization:\n  systemExtensions:\n    officialExtensions:\n      - {extension}\n"
    return f"factory.talos.dev/installer/{hashlib.sha256(schematic.encode()).hexdigest()}:{TALOS_VERSION}"


def main() -> None:
    t0 = time.perf_counter()
    if OUT.exists():
        shutil.rmtree(OUT)
    home = OUT / "home"
    os.environ["EDGEFLEET_HOME"] = str(home)
    os.environ.pop("EDGEFLEET_STATE_URL", None)
    inventory = "inventory"
    _step("validate the sample inventory", "inventory", "validate", inventory)
    _step("the fleet by country, region and ring", "inventory", "graph", "-i", inventory)
    _step("one store, resolved from all layers", "inventory", "show", "dk-002", "-i", inventory)

    upstream = OUT / "upstream" / f"talos-{TALOS_VERSION}.iso"
    _step("a Talos-like upstream boot ISO (no network here: a real one comes from the Image Factory)",
          "release", "fake-upstream", "--talos-version", TALOS_VERSION, "--out", str(upstream))
    from edgefleet.releases.upstream import sha256_file

    digest = sha256_file(upstream)
    for name, ext in (("v1", "siderolabs/iscsi-tools"), ("v2", "siderolabs/util-linux-tools")):
        _step(f"build release {name} with Packer", "release", "build", name, "--talos-version", TALOS_VERSION,
              "--upstream", str(upstream), "--upstream-sha256", digest, "--kernel-arg", "talos.platform=nocloud",
              "--extension", ext, "--installer-image", _installer_image(ext))
    _step("the release catalog", "release", "list")

    seeds = OUT / "seeds"
    _step("NoCloud seeds for every node of every store (secrets generated once per store)",
          "seed", "build", "--release", "v1", "--talos-version", TALOS_VERSION, "--all", "--out", str(seeds),
          "-i", inventory)
    _step("rebuilding with nothing changed touches nothing", "seed", "build", "--release", "v1",
          "--talos-version", TALOS_VERSION, "--all", "--out", str(seeds), "-i", inventory)
    _step("what one node boots from", "seed", "inspect", str(seeds / "dk-002" / "dk-002-n1.iso"))
    print(f"\ndemo finished in {time.perf_counter() - t0:.1f} s; files under {OUT}/", flush=True)


if __name__ == "__main__":
    main()
