"""Atomic writes: a reader sees the old file (or directory) or the new one, never a part.

One helper for every writer of a file that other processes read (reports, release images, the
upstream ISO cache, seed indexes, talosconfigs, secrets):

* ``atomic_file(path)``: a context manager giving a binary file object on a temporary file in
  ``path``'s directory; on a clean exit the file gets ``mode``, is flushed (and fsynced unless
  ``fsync=False``) and renamed over ``path``; on any exception the temporary file is removed and
  ``path`` is untouched. ``exclusive=True`` links it into place instead, so an existing ``path``
  (even one created meanwhile by someone else) raises ``FileExistsError`` and is kept.
* ``write_atomic(path, data)``: the same for bytes or text already in memory.
* ``write_atomic_many(items)``: many files, each replaced atomically and only once its bytes are
  durable: one file is fsynced, renamed and its directory fsynced; a batch is written whole, made
  durable with one ``os.sync()``, renamed, and the renames made durable with a second one (two
  flushes for the batch instead of two per file).
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
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

__all__ = ["AtomicBatch", "atomic_file", "publish_dir", "staging_dir", "write_atomic", "write_atomic_many"]


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


class AtomicBatch:
    """Many files written atomically and durably with two flushes for the whole batch (see
    ``write_atomic_many``), each one streamed to its temporary file as it is added. Use as a
    context manager and call ``commit()``; leaving without a commit removes every temporary file.
    ``single=True`` (one file expected) flushes that file with fsync instead of ``os.sync()``."""

    def __init__(self, *, mode: int = 0o644, single: bool = False):
        self.mode = mode
        self.single = single
        self._pending: list[tuple[str, Path]] = []

    def add(self, path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        self._pending.append((tmp, path))
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), self.mode)
            fh.write(data)
            if self.single:
                fh.flush()
                os.fsync(fh.fileno())

    def commit(self) -> None:
        if not self._pending:
            return
        if not self.single:
            os.sync()
        for tmp, path in self._pending:
            os.replace(tmp, path)
        if self.single:
            for directory in {path.parent for _tmp, path in self._pending}:
                _fsync_dir(directory)
        else:
            os.sync()
        self._pending.clear()

    def __enter__(self) -> AtomicBatch:
        return self

    def __exit__(self, *exc: object) -> None:
        pending, self._pending = self._pending, []
        for tmp, _path in pending:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def write_atomic_many(items: Sequence[tuple[Path, bytes]], *, mode: int = 0o644) -> None:
    """Write each ``(path, data)`` atomically and durably (see the module docstring)."""
    with AtomicBatch(mode=mode, single=len(items) == 1) as batch:
        for path, data in items:
            batch.add(path, data)
        batch.commit()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems refuse fsync on directories; the rename is done
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


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
