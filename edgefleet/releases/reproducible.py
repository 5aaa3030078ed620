"""Writing ISO images reproducibly: pycdlib builds the image, every date field is pinned to one
instant (``edgefleet.isodates``) and the bytes are written atomically (``edgefleet.atomic``).
Shared by the upstream ISO generator and the release remaster, below both of them."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pycdlib

from edgefleet.atomic import write_atomic
from edgefleet.errors import ArtifactError
from edgefleet.isodates import IsoLayoutError, pin_iso_dates

__all__ = ["DEFAULT_EPOCH", "write_reproducible"]

DEFAULT_EPOCH = 1767225600  # 2026-01-01T00:00:00Z: the timestamp of every record we write


def write_reproducible(image: pycdlib.PyCdlib, out: Path, epoch: float = DEFAULT_EPOCH) -> None:
    """Write ``image`` to ``out`` atomically with every date field pinned to ``epoch`` (UTC), so the
    same inputs give the same bytes whatever the clock and TZ (see ``edgefleet.isodates``)."""
    buf = io.BytesIO()
    image.write_fp(buf)
    data = bytearray(buf.getbuffer())
    try:
        pin_iso_dates(data, datetime.fromtimestamp(epoch, UTC))
    except IsoLayoutError as e:
        raise ArtifactError(f"cannot write {out} reproducibly: {e}") from e
    write_atomic(out, bytes(data), fsync=False, make_parents=True)
