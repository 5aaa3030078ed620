"""Every output path of the CLI, pointed at something it cannot write: exit 2, one line naming the
path, no traceback, nothing written. Plus odd input paths (an inventory that is a file, a missing
directory, a home that is a file).

The read-only directory is really unwritable for this process: as root (where mode 0555 stops
nothing) it is made immutable with ``chattr +i``, or is a read-only tmpfs mount; otherwise mode 0555."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import SAMPLE_INVENTORY, record_release
from tests.unit.test_release_fuzz import run_cli

INV = ["-i", str(SAMPLE_INVENTORY)]


def _make_unwritable(d: Path) -> str | None:
    """Make ``d`` unwritable for this process; returns how (None: no way here)."""
    if os.geteuid() != 0:
        d.chmod(0o555)
        return "chmod"
    chattr = shutil.which("chattr")
    if chattr and subprocess.run([chattr, "+i", str(d)], capture_output=True).returncode == 0:
        return "chattr"
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)],
                      capture_output=True).returncode == 0:
        return "mount"
    return None


def _undo(d: Path, how: str) -> None:
    if how == "chmod":
        d.chmod(0o755)
    elif how == "chattr":
        subprocess.run(["chattr", "-i", str(d)], check=True)
    elif how == "mount":
        subprocess.run(["umount", str(d)], check=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A home with a release v1, a regular file, and a read-only directory."""
    root = tmp_path_factory.mktemp("paths")
    home = root / "home"
    record_release(home, "v1")
    (root / "afile").write_text("not a directory\n")
    (root / "adir").mkdir()
    (root / "seeds").mkdir()
    (root / "seeds" / "dk-001").write_text("a file where a store directory goes\n")
    # A private stand-in for /dev/null (the same character device 1:3 when we may create one, else a
    # FIFO): if a check ever let a write through, only this node would be replaced, not the system's.
    try:
        os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        os.mkfifo(root / "null")
    ro = root / "ro"
    ro.mkdir()
    how = _make_unwritable(ro)
    if how is None:
        msg = "no way to make a directory unwritable for this process here (chattr, mount, non-root)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    probe = ro / "probe"
    with pytest.raises(OSError):
        probe.write_text("x")  # the directory really refuses writes
    try:
        yield root
    finally:
        _undo(ro, how)


def _tree(root: Path) -> list[tuple[str, int, int]]:
    out = []
    for p in root.rglob("*"):
        if p.name == ".lock" and p.parent.name == "seeds":
            continue  # the seed build's empty flock file in an output directory that existed before
        st = p.lstat()
        out.append((str(p.relative_to(root)), stat.S_IFMT(st.st_mode), st.st_size if stat.S_ISREG(st.st_mode) else -1))
    return sorted(out)


# Targets, relative to the world: (name, path template). {w} is the world directory.
AFILE, UNDER_FILE, RO_NEW, RO_SELF, DEVNULL, ADIR = (
    "{w}/afile", "{w}/afile/sub", "{w}/ro/new", "{w}/ro", "{w}/null", "{w}/adir")

CASES = [
    # seed build --out is a directory
    (["seed", "build", "--release", "v1", "--store", "dk-001", "--out", AFILE, *INV], "is a regular file"),
    (["seed", "build", "--release", "v1", "--store", "dk-001", "--out", UNDER_FILE, *INV], "nothing can be created"),
    (["seed", "build", "--release", "v1", "--store", "dk-001", "--out", RO_NEW, *INV], "cannot write in directory"),
    (["seed", "build", "--release", "v1", "--store", "dk-001", "--out", RO_SELF, *INV], "cannot write in directory"),
    (["seed", "build", "--release", "v1", "--store", "dk-001", "--out", DEVNULL, *INV], "not a "),
    # inventory generate --out: a new directory
    (["inventory", "generate", "--stores", "2", "--out", AFILE], "is a regular file"),
    (["inventory", "generate", "--stores", "2", "--out", UNDER_FILE], "nothing can be created"),
    (["inventory", "generate", "--stores", "2", "--out", RO_NEW], "cannot write in directory"),
    (["inventory", "generate", "--stores", "2", "--out", DEVNULL], "not a "),
    # file outputs
    (["release", "fake-upstream", "--out", ADIR], "is a directory"),
    (["release", "fake-upstream", "--out", UNDER_FILE], "nothing can be created"),
    (["release", "fake-upstream", "--out", RO_NEW], "cannot write in directory"),
    (["release", "fake-upstream", "--out", DEVNULL], "not a "),
    (["report", "--out", ADIR], "is a directory"),
    (["report", "--out", UNDER_FILE + "/r.html"], "nothing can be created"),
    (["report", "--out", RO_NEW], "cannot write in directory"),
    (["report", "--out", DEVNULL], "not a "),
    (["talosconfig", "dk-001", "--out", ADIR, *INV], "is a directory"),
    (["talosconfig", "dk-001", "--out", UNDER_FILE, *INV], "nothing can be created"),
    (["talosconfig", "dk-001", "--out", RO_NEW, *INV], "cannot write in directory"),
    (["talosconfig", "dk-001", "--out", DEVNULL, *INV], "not a "),
    (["kubeconfig", "dk-001", "--out", ADIR, *INV], "is a directory"),
    (["kubeconfig", "dk-001", "--out", "{w}/missing/dir/k", *INV], "does not exist"),
    (["kubeconfig", "dk-001", "--out", RO_NEW, *INV], "cannot write in directory"),
    (["kubeconfig", "dk-001", "--out", DEVNULL, *INV], "not a "),
]


@pytest.mark.parametrize(("args", "says"), CASES, ids=[f"{a[0]}-{a[1]}-{a[a.index('--out') + 1]}" for a, _ in CASES])
def test_unwritable_output_paths_exit_2_in_one_line_and_write_nothing(world: Path, args: list[str], says: str) -> None:
    argv = [a.replace("{w}", str(world)) for a in args]
    target = argv[argv.index("--out") + 1]
    before = _tree(world)
    code, text = run_cli(argv, world / "home")
    assert code == 2, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    assert target in lines[0] and says in lines[0], text
    assert _tree(world) == before, "something was written"
    assert not (world / "null").is_file()


ODD = [
    (["inventory", "validate", "{w}/afile"], 2, "does not exist"),
    (["inventory", "validate", "{w}/nope"], 2, "does not exist"),
    (["inventory", "show", "dk-001", "-i", "{w}/afile"], 2, "does not exist"),
    (["rollout", "plan", "--release", "v1", "-i", "{w}/adir"], 2, "fleet.yml"),
    (["rollout", "plan", "--release", "v1", "--now", "9999-12-31T00:00:00Z", *INV], 2, "1970-2999"),
    (["seed", "inspect", "{w}/adir"], 2, "adir"),
    (["seed", "inspect", "{w}/nope.iso"], 2, "nope.iso"),
    (["seed", "build", "--release", "v1", "--store", "dk-001", "--out", "{w}/o", "--talos-schema", "{w}/adir", *INV],
     2, "adir"),
    # A file where the seed build needs its store directory, inside a good --out.
    (["seed", "build", "--release", "v1", "--store", "dk-001", "--out", "{w}/seeds", *INV], 2, "seeds/dk-001"),
    (["sim", "serve", "--scenario", "{w}/adir", *INV], 2, "adir"),
    (["sim", "serve", "--scenario", "{w}/nope.yml", *INV], 2, "nope.yml"),
    (["sim", "serve", "--clock", "9999-01-01T00:00:00Z", *INV], 2, "1970-2999"),
]


@pytest.mark.parametrize(("args", "code", "says"), ODD, ids=[" ".join(a[:2]) + f"-{i}" for i, (a, _c, _s) in
                                                             enumerate(ODD)])
def test_odd_input_paths_are_one_line_errors(world: Path, args: list[str], code: int, says: str) -> None:
    argv = [a.replace("{w}", str(world)) for a in args]
    before = _tree(world)
    got, text = run_cli(argv, world / "home")
    assert got == code and "Traceback" not in text and says in text, text
    assert _tree(world) == before, "something was written"


@pytest.mark.parametrize("args", [
    ["rollout", "status"], ["report", "--out", "{w}/adir/r.html"],
    ["seed", "build", "--release", "v1", "--store", "dk-001", "--out", "{w}/o", *INV],
    ["talosconfig", "dk-001", "--out", "{w}/adir/t", *INV],
])
def test_a_home_that_is_a_file_is_a_one_line_error(world: Path, args: list[str]) -> None:
    from unittest import mock

    argv = [a.replace("{w}", str(world)) for a in args]
    before = _tree(world)
    home = world / "afile"
    with mock.patch.dict(os.environ, {"EDGEFLEET_HOME": str(home)}):
        code, text = run_cli(argv, home)
    assert code in (1, 2) and "Traceback" not in text and str(home) in text, text
    assert len([line for line in text.splitlines() if line.strip()]) == 1, text
    assert _tree(world) == before, "something was written"
