"""Check an output path before any work is done, so that a bad ``--out`` writes nothing at all.

A command that writes files calls ``check_output_dir`` or ``check_output_file`` first, before it
loads, renders or generates anything (secrets included). The checks only look (``stat`` and
``access``); they create nothing. They refuse, with ``OutputPathError`` (exit 2) and one line naming
the path and what is wrong:

* a directory output that exists as a file (or a device, a FIFO, ...);
* a file output that exists as a directory or as anything but a regular file (``/dev/null``: a
  rename over it would replace the device);
* a path under a regular file (``report.html/x``), or under a missing directory when the
  command does not create parents;
* a target or its nearest existing directory that this process cannot write into (permissions, a
  read-only mount, an immutable directory).

A write that still fails afterwards (a disk that fills up, a race) is reported by the writer.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from edgefleet.errors import OutputPathError

__all__ = ["check_output_dir", "check_output_file"]


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"  # pragma: no cover - no other file types on Linux


def _stat(path: Path, option: str) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None  # a component is a file: the ancestor walk names it
    except OSError as e:
        raise OutputPathError(f"{option} {path}: {e.strerror or e}") from None


def _writable_dir(d: Path, option: str, target: Path) -> None:
    if not os.access(d, os.W_OK | os.X_OK):
        raise OutputPathError(f"{option} {target}: cannot write in directory {d} (permission denied, immutable "
                              "or a read-only file system); choose another path")


def _nearest_existing(path: Path, option: str, target: Path, *, create_parents: bool) -> Path:
    """The nearest existing ancestor of ``path``, which must be a writable directory."""
    p = path.absolute()
    missing = 0
    while True:
        st = _stat(p, option)
        if st is not None:
            break
        if p.parent == p:  # pragma: no cover - the root always exists
            raise OutputPathError(f"{option} {target}: no existing directory above it")
        p = p.parent
        missing += 1
    if not stat.S_ISDIR(st.st_mode):
        raise OutputPathError(f"{option} {target}: {p} is {_kind(st.st_mode)}, so nothing can be created under it")
    if missing > 1 and not create_parents:
        raise OutputPathError(f"{option} {target}: directory {path.parent} does not exist; create it first")
    _writable_dir(p, option, target)
    return p


def check_output_dir(path: Path, option: str = "--out") -> None:
    """``path`` can be used as an output directory: an existing writable directory, or a new one
    (missing parents are created by the writer) under a writable directory."""
    st = _stat(path, option)
    if st is not None:
        if not stat.S_ISDIR(st.st_mode):
            raise OutputPathError(f"{option} {path} is {_kind(st.st_mode)}, not a directory; give a directory")
        _writable_dir(path, option, path)
        return
    _nearest_existing(path, option, path, create_parents=True)


def check_output_file(path: Path, option: str = "--out", *, create_parents: bool = False) -> None:
    """``path`` can be (re)written as a regular file: it is absent or a writable regular file, and
    its directory exists (or, with ``create_parents``, can be created) and is writable."""
    st = _stat(path, option)
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise OutputPathError(f"{option} {path} is {_kind(st.st_mode)}, not a regular file; give a file path")
        if not os.access(path, os.W_OK):
            raise OutputPathError(f"{option} {path}: the file is not writable (permissions, an immutable file or "
                                  "a read-only file system)")
        _writable_dir(path.absolute().parent, option, path)
        return
    _nearest_existing(path, option, path, create_parents=create_parents)
