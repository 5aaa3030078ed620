"""The one atomic-write helper (``edgefleet.atomic``): readers see the old file or the new one, a
failed write leaves nothing behind, and no other module renames files into place on its own."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from edgefleet.atomic import AtomicBatch, atomic_file, staging_dir, write_atomic, write_atomic_many

ROOT = Path(__file__).resolve().parents[2]


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


def test_write_replaces_whole_with_the_mode_asked(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    target.write_text("old")
    write_atomic(target, "new ✓", mode=0o640)
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert _leftovers(tmp_path) == []


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "x.iso"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(target) as fh:
        fh.write(b"half")
        raise RuntimeError("checksum mismatch")
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_exclusive_never_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "secrets.yaml"
    write_atomic(target, b"first", mode=0o600, exclusive=True)
    with pytest.raises(FileExistsError):
        write_atomic(target, b"second", mode=0o600, exclusive=True)
    assert target.read_bytes() == b"first"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert _leftovers(tmp_path) == []


def test_make_parents(tmp_path: Path) -> None:
    write_atomic(tmp_path / "a" / "b" / "c.txt", "x", make_parents=True)
    assert (tmp_path / "a" / "b" / "c.txt").read_text() == "x"


def test_staging_dir_publishes_whole_or_not_at_all(tmp_path: Path) -> None:
    final = tmp_path / "inventory"
    final.mkdir()  # an empty directory is replaced
    with staging_dir(final) as d:
        (d / "fleet.yml").write_text("a: 1\n")
        assert not (final / "fleet.yml").exists()
    assert (final / "fleet.yml").read_text() == "a: 1\n"

    other = tmp_path / "other"
    with pytest.raises(ValueError), staging_dir(other) as d:
        (d / "fleet.yml").write_text("half")
        raise ValueError("generation failed")
    assert not other.exists() and _leftovers(tmp_path) == []

    with pytest.raises(OSError), staging_dir(final) as d:  # not empty now: kept as it is
        (d / "fleet.yml").write_text("b: 2\n")
    assert (final / "fleet.yml").read_text() == "a: 1\n" and _leftovers(tmp_path) == []


@pytest.mark.parametrize("count", [1, 3])
def test_batches(tmp_path: Path, count: int) -> None:
    items = [(tmp_path / f"n{i}.iso", f"seed {i}".encode()) for i in range(count)]
    write_atomic_many(items, mode=0o600)
    assert [p.read_bytes() for p, _ in items] == [d for _, d in items]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p, _ in items)
    with AtomicBatch(single=count == 1) as batch:  # no commit: nothing replaced, nothing left
        for p, _ in items:
            batch.add(p, b"other")
    assert [p.read_bytes() for p, _ in items] == [d for _, d in items]
    assert _leftovers(tmp_path) == []


def test_no_module_renames_files_into_place_by_itself() -> None:
    own = re.compile(r"\bos\.(replace|rename|link)\(|\.rename\(")
    stray = [f"{p.relative_to(ROOT)}:{n}" for p in sorted((ROOT / "edgefleet").rglob("*.py")) if p.name != "atomic.py"
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if own.search(line)]
    assert stray == []
