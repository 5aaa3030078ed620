"""Reproducible ISO images: pin every date field of an ISO9660 image to one instant.

pycdlib (which writes our seed and release images) stamps every date field from ``time.time()``
converted with ``time.localtime()``, so its bytes depend on the wall clock and on ``TZ``, and it
has no option to pass a date. Date fields are the *only* clock-dependent bytes (they have fixed
sizes, so layout, extents and lengths never depend on the clock), so the writers let pycdlib build
the image and then call :func:`pin_iso_dates` on the produced bytes. The walk follows the
published formats, not pycdlib internals:

* each Primary/Supplementary (Joliet) volume descriptor: creation, modification and effective
  dates (ECMA-119 8.4.26.1, the expiration date stays "not specified") and its root record;
* every directory record of every directory tree the descriptors point at (ECMA-119 9.1.5);
* every Rock Ridge ``TF`` entry in the records' System Use areas, following ``CE`` continuation
  areas (SUSP 1.12 5.1, RRIP 1.12 4.1.6), in short (7 byte) or long (17 byte) form.

This touches no global state (no patched ``time`` module, no ``TZ`` change): it is a pure function
of the bytes, so concurrent writers in many threads cannot interfere. Anything unexpected in the
walk raises :class:`IsoLayoutError` instead of silently leaving a clock-dependent byte behind.
Pure: no I/O.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime

__all__ = ["DEFAULT_WHEN", "IsoLayoutError", "pin_iso_dates"]

DEFAULT_WHEN = datetime(1980, 1, 1, tzinfo=UTC)
"""The instant written into every date field unless the caller picks another."""

_SECTOR = 2048
_FIRST_VD_SECTOR = 16
_VD_DATE_OFFSETS = (813, 830, 864)  # creation, modification, effective (8.4.26-8.4.29)
_VD_ROOT_RECORD = 156


class IsoLayoutError(ValueError):
    """The image does not follow ISO9660 / SUSP / Rock Ridge where the walk expected it to."""


def _encode(when: datetime) -> tuple[bytes, bytes]:
    """``when`` in the two ECMA-119 encodings: the 7-byte directory-record form (years since 1900,
    month, day, hour, minute, second, GMT offset in 15 min units) and the 17-byte descriptor form."""
    if when.tzinfo is None:
        raise ValueError("pin_iso_dates needs an aware datetime")
    t = when.astimezone(UTC)
    if not 1900 <= t.year <= 2155:
        raise ValueError(f"{t.year} cannot be written into an ISO9660 directory record")
    dr = struct.pack("=BBBBBBb", t.year - 1900, t.month, t.day, t.hour, t.minute, t.second, 0)
    vd = f"{t:%Y%m%d%H%M%S}{t.microsecond // 10000:02d}".encode() + b"\x00"
    return dr, vd


def pin_iso_dates(image: bytearray, when: datetime = DEFAULT_WHEN, *, max_directories: int = 65536) -> None:
    """Overwrite, in place, every date field of an ISO9660 image (with Rock Ridge / Joliet) with
    ``when`` (UTC). Raises ``IsoLayoutError`` where the image does not follow the formats."""
    dr_date, vd_date = _encode(when)
    roots: list[tuple[int, int]] = []
    sector = _FIRST_VD_SECTOR
    while True:
        base = sector * _SECTOR
        if base + _SECTOR > len(image) or image[base + 1:base + 6] != b"CD001":
            raise IsoLayoutError("ISO volume descriptor set is not terminated")
        vd_type = image[base]
        if vd_type == 255:
            break
        if vd_type in (1, 2):
            for off in _VD_DATE_OFFSETS:
                image[base + off:base + off + 17] = vd_date
            root = base + _VD_ROOT_RECORD
            image[root + 18:root + 25] = dr_date
            extent, length = _u32(image, root + 2), _u32(image, root + 10)
            roots.append((extent, length))
        sector += 1
    for extent, length in roots:
        _pin_tree(image, extent, length, dr_date, vd_date, max_directories)


def _pin_tree(image: bytearray, root_extent: int, root_length: int, dr_date: bytes, vd_date: bytes,
              max_directories: int) -> None:
    pending = [(root_extent, root_length)]
    seen: set[int] = set()
    skip = 0  # SUSP SP "bytes skipped" value, learnt from the root's "." record
    while pending:
        extent, length = pending.pop()
        if extent in seen:
            continue
        seen.add(extent)
        if len(seen) > max_directories:
            raise IsoLayoutError(f"ISO directory tree has more than {max_directories} directories")
        pos, end = extent * _SECTOR, extent * _SECTOR + length
        if end > len(image):
            raise IsoLayoutError("ISO directory extent lies outside the image")
        while pos < end:
            rec_len = image[pos]
            if rec_len == 0:  # records never cross a sector: the rest of this sector is padding
                pos = (pos // _SECTOR + 1) * _SECTOR
                continue
            if rec_len < 34 or pos + rec_len > end:
                raise IsoLayoutError("malformed ISO directory record")
            image[pos + 18:pos + 25] = dr_date
            name_len = image[pos + 32]
            name = bytes(image[pos + 33:pos + 33 + name_len])
            su_start = pos + 33 + name_len + (1 - name_len % 2)
            is_root_dot = name == b"\x00" and extent == root_extent
            sp_skip = _pin_susp(image, su_start + (0 if is_root_dot else skip), pos + rec_len, dr_date, vd_date)
            if is_root_dot and sp_skip is not None:
                skip = sp_skip
            if image[pos + 25] & 0x02 and name not in (b"\x00", b"\x01"):
                pending.append((_u32(image, pos + 2), _u32(image, pos + 10)))
            pos += rec_len


def _pin_susp(image: bytearray, pos: int, end: int, dr_date: bytes, vd_date: bytes) -> int | None:
    """Pin TF timestamps in one System Use area and its CE continuations; return SP's skip if seen."""
    sp_skip: int | None = None
    hops = 0
    while True:
        continuation: tuple[int, int] | None = None
        while pos + 4 <= end:
            sig, entry_len = bytes(image[pos:pos + 2]), image[pos + 2]
            if entry_len < 4 or pos + entry_len > end:
                break  # padding, or a System Use area that is not SUSP (e.g. Joliet's, if any)
            if sig == b"SP":
                sp_skip = image[pos + 6]
            elif sig == b"CE":
                continuation = (_u32(image, pos + 4) * _SECTOR + _u32(image, pos + 12),
                                _u32(image, pos + 20))
            elif sig == b"TF":
                _pin_tf(image, pos, entry_len, dr_date, vd_date)
            elif sig == b"ST":
                break
            pos += entry_len
        if continuation is None:
            return sp_skip
        hops += 1
        if hops > 64:
            raise IsoLayoutError("too many Rock Ridge continuation areas")
        pos, end = continuation[0], continuation[0] + continuation[1]
        if end > len(image):
            raise IsoLayoutError("Rock Ridge continuation area lies outside the image")


def _pin_tf(image: bytearray, pos: int, entry_len: int, dr_date: bytes, vd_date: bytes) -> None:
    flags = image[pos + 4]
    long_form = bool(flags & 0x80)
    size, stamp = (17, vd_date) if long_form else (7, dr_date)
    count = bin(flags & 0x7F).count("1")
    if 5 + count * size != entry_len:
        raise IsoLayoutError("Rock Ridge TF entry length does not match its flags")
    for i in range(count):
        off = pos + 5 + i * size
        image[off:off + size] = stamp


def _u32(image: bytearray | bytes, off: int) -> int:
    value: int = struct.unpack_from("<I", image, off)[0]
    return value


