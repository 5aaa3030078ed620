"""Input limits on YAML: alias bombs, merge keys, duplicate keys, unknown tags, bytes that are not UTF-8.

The alias bomb is run through the real CLI in a child process whose own peak memory is read back with
``os.wait4`` (the kernel's rusage of exactly that child)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgefleet.errors import InputError, InventoryError, SecretsError, YamlError
from edgefleet.inventory.load import load_fleet
from edgefleet.safeyaml import ALIAS_ALLOWANCE, ALIAS_FACTOR, load_yaml_file, parse_yaml, parse_yaml_all
from edgefleet.secrets import parse_secrets
from edgefleet.sim.build import load_scenario


def _bomb(levels: int = 9, key: str = "lol") -> str:
    """Billion laughs: 10 ** levels strings from a few hundred bytes."""
    lines = [f"{key}0: &{key}0 [ha, ha, ha, ha, ha, ha, ha, ha, ha, ha]"]
    for i in range(1, levels + 1):
        lines.append(f"{key}{i}: &{key}{i} [" + ", ".join([f"*{key}{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


# The child reports its own high-water mark (VmHWM belongs to the address space exec made):
# ru_maxrss of a child forked from this test process would count pytest's own pages too.
_MEASURED = """
import atexit, runpy, sys
out = sys.argv.pop(1)
def _peak():
    hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:")][0]
    open(out, "w").write(str(int(hwm.split()[1]) * 1024))
atexit.register(_peak)
sys.argv[0] = "edgefleet"
runpy.run_module("edgefleet.cli", run_name="__main__")
"""


def _run_cli_measured(args: list[str], cwd: Path) -> tuple[int, str, float, int]:
    """``edgefleet ARGS`` in a child process: (exit code, stderr, seconds, peak RSS in bytes). The
    child's address space is capped at 2 GiB so that a loader without limits fails fast instead of
    swapping the machine."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    peak = cwd / "peak-rss"
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", _MEASURED, str(peak), *args], cwd=cwd, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "300"}, preexec_fn=cap, timeout=120,
                       check=False)
    seconds = time.monotonic() - t0
    err = p.stderr.decode(errors="replace")
    assert peak.exists(), f"the child did not report its peak memory: {err[-2000:]}"
    return p.returncode, err, seconds, int(peak.read_text())


def test_alias_bomb_in_an_inventory_is_refused_fast_with_bounded_memory_and_a_line(sample_copy: Path) -> None:
    gv = sample_copy / "group_vars" / "country_dk.yml"
    head = gv.read_text()
    gv.write_text(head + _bomb())
    assert len(_bomb().encode()) < 1024
    bomb_line = len(head.splitlines()) + 1  # where the bomb starts
    last_line = bomb_line + 9

    t0 = time.monotonic()
    with pytest.raises(InventoryError) as ei:
        load_fleet(sample_copy)
    assert time.monotonic() - t0 < 1.0
    (p,) = [p for p in ei.value.problems if "alias" in p.message]
    assert p.file is not None and p.file.endswith("group_vars/country_dk.yml")
    assert p.line is not None and bomb_line <= p.line <= last_line

    code, err, seconds, rss = _run_cli_measured(["inventory", "validate", str(sample_copy)], sample_copy.parent)
    assert code == 2, err
    assert "Traceback" not in err and "group_vars/country_dk.yml:" in err and "alias bomb" in err, err
    assert rss < 200 * 1024 * 1024, f"peak RSS {rss / 2**20:.0f} MiB"
    assert seconds < 30, seconds  # interpreter start and imports included


def test_alias_limit_is_relative_to_the_document() -> None:
    # A legitimate use: one anchor reused a few times (merge keys included) is fine.
    doc = parse_yaml("base: &b {a: 1, b: [1, 2, 3]}\n" + "".join(f"s{i}: {{<<: *b, a: {i}}}\n" for i in range(200)))
    assert doc["s7"] == {"a": 7, "b": [1, 2, 3]} and doc["base"] == {"a": 1, "b": [1, 2, 3]}
    # Six levels of ten is a million nodes from 300 bytes: far over 4x the document + the allowance.
    with pytest.raises(YamlError, match="alias bomb") as ei:
        parse_yaml(_bomb(6), source="x.yml")
    assert ei.value.problem.file == "x.yml" and ei.value.problem.line is not None
    # Under the allowance: three levels of ten build about 12,000 nodes in all, accepted.
    assert ALIAS_FACTOR * 20 + ALIAS_ALLOWANCE > 12_500
    assert len(parse_yaml(_bomb(3))["lol3"]) == 10


def test_merge_keys_follow_yaml_and_duplicates_are_refused() -> None:
    doc = parse_yaml("a: &a {x: 1, y: 2}\nb: &b {y: 3, z: 4}\nc: {<<: [*a, *b], x: 0}\n")
    assert doc["c"] == {"x": 0, "y": 2, "z": 4}  # own keys win, then the earlier merged mapping
    with pytest.raises(YamlError, match="twice") as ei:
        parse_yaml("a: 1\nb: 2\na: 3\n", source="d.yml")
    assert ei.value.problem.line == 3
    with pytest.raises(YamlError, match="merge key"):
        parse_yaml("a: {<<: 5}\n")


def test_recursive_alias_and_unknown_tags_are_located_errors() -> None:
    with pytest.raises(YamlError, match="deeper than"):
        parse_yaml("a: &a [*a]\n")
    with pytest.raises(YamlError, match="tag !foo") as ei:
        parse_yaml("a: 1\nb: !foo x\n", source="t.yml")
    assert ei.value.problem.line == 2
    with pytest.raises(YamlError, match="tag"):
        parse_yaml("a: !!python/object:os.system x\n")


def test_bytes_that_are_not_utf8_name_the_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "x.yml"
    f.write_bytes("a: 1\nb: 2\nname: K\xf8benhavn\n".encode("latin-1"))
    with pytest.raises(YamlError) as ei:
        load_yaml_file(f)
    assert ei.value.problem.file == str(f) and ei.value.problem.line == 3
    assert "not UTF-8" in str(ei.value) and f"{f}:3:" in str(ei.value)
    # A byte-order mark is allowed.
    f.write_bytes(b"\xef\xbb\xbfa: 1\n")
    assert load_yaml_file(f) == {"a": 1}
    # A control character: located too.
    with pytest.raises(YamlError) as ei:
        parse_yaml("a: 1\nb: \x07\n", source="c.yml")
    assert ei.value.problem.line == 2


def test_inventory_file_that_is_not_utf8_exits_2_with_file_and_line(sample_copy: Path) -> None:
    f = sample_copy / "stores" / "no.yml"
    lines = f.read_bytes().split(b"\n")
    lines[4] = lines[4] + " # Troms\xf8".encode("latin-1")
    f.write_bytes(b"\n".join(lines))
    r = subprocess.run([sys.executable, "-m", "edgefleet.cli", "inventory", "validate", str(sample_copy)],
                       capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "300"})
    assert r.returncode == 2, r.stderr
    assert "stores/no.yml:5:" in r.stderr and "not UTF-8" in r.stderr and "Traceback" not in r.stderr


def test_every_yaml_reader_has_the_limits(tmp_path: Path) -> None:
    # Secrets bundle.
    with pytest.raises(SecretsError, match="alias bomb"):
        parse_secrets(_bomb().encode(), source="secrets/dk-001.yaml")
    with pytest.raises(SecretsError, match="not UTF-8"):
        parse_secrets(b"cluster:\n  id: \xff\n", source="secrets/dk-001.yaml")
    # Simulator scenario file.
    sc = tmp_path / "scenario.yml"
    sc.write_text(_bomb())
    with pytest.raises(InputError, match="alias bomb") as ei:
        load_scenario(sc)
    assert "scenario file" in str(ei.value)
    # Multi-document streams (Talos machine configs as the simulator reads them).
    with pytest.raises(YamlError, match="alias bomb"):
        parse_yaml_all("version: v1alpha1\n---\n" + _bomb())
    assert parse_yaml_all("a: 1\n---\nb: 2\n") == [{"a": 1}, {"b": 2}]
