"""Atomic writes: a reader sees the old file (or directory) or the new one, never a part.

One helper for every writer of a file that other processes read (reports, release images, the
upstream ISO cache, seed indexes, talosconfigs, secrets):

* ``atomic_file(path)``: a context manager giving a binary file object on a temporary file in
  ``path``'s directory; on a clean exit the file gets ``mode``, is flushed (and fsynced unless
  ``fsync=False``) and renamed over ``path``; on any exception the temporary file is removed and
  ``path`` is untouched. ``exclusive=True`` links it into place instead, so an existing ``path``
  (even one created meanwhile by someone else) raises ``FileExistsError`` and is kept.
* ``write_atomic(path, data)``: the same for bytes or text already in memory.
* ``staging_dir(final)``: a temporary directory beside ``final`` to fill; on a clean exit it is
  renamed to ``final`` (``publish_dir``), on an exception removed with its content.
* ``publish_dir(tmp, final)``: ``rename(2)`` of a finished directory: atomic on one filesystem, and
  it fails (``OSError``) when ``final`` exists and is not empty, so a directory that appeared
  meanwhile is never replaced.

The temporary names start with a dot and the target's name (``.report.html.<random>.tmp``), so a
crash leaves a file that says what it was. Errors are the ``OSError`` of the failing call: each
caller turns it into its own ``EdgefleetError`` naming the option to change.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_file", "publish_dir", "staging_dir", "write_atomic"]


@contextlib.contextmanager
def atomic_file(path: Path, *, mode: int = 0o644, fsync: bool = True, exclusive: bool = False,
                make_parents: bool = False) -> Iterator[BinaryIO]:
    """Write ``path`` through a temporary file beside it (see the module docstring)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if make_parents:
        parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        if exclusive:
            os.link(tmp, path)  # FileExistsError if the file exists, whoever created it
        else:
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_atomic(path: Path, data: bytes | str, *, mode: int = 0o644, fsync: bool = True, exclusive: bool = False,
                 make_parents: bool = False) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically (see ``atomic_file``)."""
    body = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_file(path, mode=mode, fsync=fsync, exclusive=exclusive, make_parents=make_parents) as fh:
        fh.write(body)


def publish_dir(tmp: Path, final: Path) -> None:
    """Rename the finished directory ``tmp`` to ``final`` (same filesystem). An empty ``final`` is
    replaced; an existing non-empty one raises ``OSError`` (ENOTEMPTY/EEXIST) and is kept."""
    os.rename(tmp, final)


@contextlib.contextmanager
def staging_dir(final: Path) -> Iterator[Path]:
    """A new private directory beside ``final`` to fill; published as ``final`` on a clean exit
    (``publish_dir``), removed with everything in it otherwise."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
