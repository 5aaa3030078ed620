"""NoCloud seed ISOs: render them byte-for-byte reproducibly, write them atomically, read them back.

A seed ISO is what cloud-init's NoCloud datasource (and Talos' ``nocloud`` platform) looks for: an
ISO9660 volume labelled ``CIDATA`` holding ``user-data``, ``meta-data`` and ``network-config``.
Names are ISO9660 level 3 (``/USER_DATA.;1``) with the real names carried twice, as Rock Ridge
(read by Linux/Talos) and as Joliet names (read by everything else); without them cloud-init does
not find the files.

Reproducibility. pycdlib stamps every date field from ``time.time()`` converted with
``time.localtime()``, so its bytes depend on the wall clock and on ``TZ``, and it has no option to
pass a date. Date fields are the *only* clock-dependent bytes (they have fixed sizes, so layout,
extents and lengths never depend on the clock), so :func:`render_seed_iso` lets pycdlib build the
image and then rewrites every date field in the produced bytes with :data:`SEED_EPOCH`
(1980-01-01T00:00:00Z, offset 0). The walk follows the published formats, not pycdlib internals:

* each Primary/Supplementary (Joliet) volume descriptor: creation, modification and effective
  dates (ECMA-119 8.4.26.1, the expiration date stays "not specified") and its root record;
* every directory record of every directory tree the descriptors point at (ECMA-119 9.1.5);
* every Rock Ridge ``TF`` entry in the records' System Use areas, following ``CE`` continuation
  areas (SUSP 1.12 5.1, RRIP 1.12 4.1.6), in short (7 byte) or long (17 byte) form.

This touches no global state (no patched ``time`` module, no ``TZ`` change): it is a pure
function of the pycdlib output, so concurrent renders in many threads cannot interfere. Anything
unexpected in the walk raises :class:`~edgefleet.errors.SeedError` instead of silently leaving
a clock-dependent byte behind; the tests render under several TZ values and clocks in separate
processes and in threads and compare the bytes.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from edgefleet.errors import SeedError

__all__ = [
    "MAX_SEED_ISO_BYTES",
    "SEED_EPOCH",
    "SEED_LABEL",
    "SeedFiles",
    "SeedIso",
    "SeedWrite",
    "read_seed_iso",
    "render_seed_iso",
    "write_seed_iso",
]

SEED_LABEL = "CIDATA"
SEED_EPOCH = "1980-01-01T00:00:00Z"
"""The one timestamp written into every date field of a seed ISO."""

MAX_SEED_ISO_BYTES = 16 * 1024 * 1024
"""A seed holds three small text files; anything larger is not a seed (e.g. a release image)."""

# (iso9660 name, Rock Ridge / Joliet name, SeedFiles attribute)
_ENTRIES: tuple[tuple[str, str, str], ...] = (
    ("USER_DATA", "user-data", "user_data"),
    ("META_DATA", "meta-data", "meta_data"),
    ("NETWORK_CONFIG", "network-config", "network_config"),
)

_SECTOR = 2048
_FIRST_VD_SECTOR = 16
# The fixed date in the two ECMA-119 encodings: 7-byte directory-record form (years since 1900,
# month, day, hour, minute, second, GMT offset in 15 min units) and 17-byte descriptor form.
_DR_DATE = struct.pack("=BBBBBBb", 80, 1, 1, 0, 0, 0, 0)
_VD_DATE = b"1980010100000000" + b"\x00"
_VD_DATE_OFFSETS = (813, 830, 864)  # creation, modification, effective (8.4.26-8.4.29)
_VD_ROOT_RECORD = 156
_MAX_DIRECTORIES = 1024  # bounds the walk on a malformed image


@dataclass(frozen=True)
class SeedFiles:
    """The three NoCloud files, as the bytes that go on the ISO."""

    user_data: bytes
    meta_data: bytes
    network_config: bytes


@dataclass(frozen=True)
class SeedWrite:
    """What :func:`write_seed_iso` did: ``changed`` is False when the file already had these bytes."""

    path: Path
    sha256: str
    changed: bool
    size: int


@dataclass(frozen=True)
class SeedIso:
    """A seed ISO read back: its volume label, its three files and the sha256 of the image."""

    label: str
    files: SeedFiles
    sha256: str


def render_seed_iso(files: SeedFiles) -> bytes:
    """Build the seed ISO in memory. Identical ``files`` give identical bytes, whatever the clock/TZ."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=SEED_LABEL, joliet=3, rock_ridge="1.09")
    for iso_name, name, attr in _ENTRIES:
        data: bytes = getattr(files, attr)
        iso.add_fp(io.BytesIO(data), len(data), f"/{iso_name}.;1", rr_name=name, joliet_path=f"/{name}")
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    image = bytearray(out.getbuffer())
    _pin_dates(image)
    return bytes(image)


def write_seed_iso(path: Path, files: SeedFiles) -> SeedWrite:
    """Write the seed ISO to ``path`` atomically (mode 0600); do nothing if it already has these bytes.

    Missing parent directories are created with mode 0700 (seeds hold cluster secrets). A file that
    already has the right bytes is left alone (``changed=False``); only its mode is corrected.
    """
    image = render_seed_iso(files)
    digest = hashlib.sha256(image).hexdigest()
    _make_private_dirs(path.parent)
    try:
        existing = _sha256_of_file(path) if path.stat().st_size == len(image) else None
    except FileNotFoundError:
        existing = None
    if existing == digest:
        if path.stat().st_mode & 0o777 != 0o600:
            path.chmod(0o600)
        return SeedWrite(path=path, sha256=digest, changed=False, size=len(image))
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(image)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return SeedWrite(path=path, sha256=digest, changed=True, size=len(image))


def read_seed_iso(source: Path | bytes) -> SeedIso:
    """Read a seed ISO (a file or its bytes) back through its Rock Ridge, else its Joliet names."""
    where = str(source) if isinstance(source, Path) else "<seed bytes>"
    if isinstance(source, Path):
        try:
            size = source.stat().st_size
            if size > MAX_SEED_ISO_BYTES:
                raise SeedError(f"{where}: {size} bytes is too large for a NoCloud seed ISO "
                                f"(limit {MAX_SEED_ISO_BYTES}); is this a release image?")
            image = source.read_bytes()
        except OSError as exc:
            raise SeedError(f"{where}: cannot read seed ISO: {exc.strerror or exc}") from exc
    else:
        image = bytes(source)
    label = _volume_label(image, where)
    if label.upper() != SEED_LABEL:
        raise SeedError(f"{where}: volume label is {label!r}, a NoCloud seed must be labelled "
                        f"{SEED_LABEL!r}; rebuild it with edgefleet")
    iso = pycdlib.PyCdlib()
    try:
        iso.open_fp(io.BytesIO(image))
    except PyCdlibException as exc:
        raise SeedError(f"{where}: not a readable ISO9660 image: {exc}") from exc
    try:
        if iso.has_rock_ridge():
            kind = "rr_path"
        elif iso.has_joliet():
            kind = "joliet_path"
        else:
            raise SeedError(f"{where}: ISO has neither Rock Ridge nor Joliet names, so cloud-init cannot "
                            "find user-data/meta-data/network-config in it; rebuild it with edgefleet")
        found: dict[str, bytes] = {}
        for _iso_name, name, attr in _ENTRIES:
            out = io.BytesIO()
            try:
                iso.get_file_from_iso_fp(out, **{kind: f"/{name}"})
            except PyCdlibException as exc:
                raise SeedError(f"{where}: seed ISO has no /{name} ({kind.split('_')[0]} name): {exc}") from exc
            found[attr] = out.getvalue()
    finally:
        iso.close()
    return SeedIso(label=label, files=SeedFiles(**found), sha256=hashlib.sha256(image).hexdigest())


# --- date pinning (see module docstring) --------------------------------------------------------


def _pin_dates(image: bytearray) -> None:
    """Overwrite every date field of an ISO9660 image (with Rock Ridge / Joliet) with SEED_EPOCH."""
    roots: list[tuple[int, int]] = []
    sector = _FIRST_VD_SECTOR
    while True:
        base = sector * _SECTOR
        if base + _SECTOR > len(image) or image[base + 1:base + 6] != b"CD001":
            raise SeedError("internal: ISO volume descriptor set is not terminated")
        vd_type = image[base]
        if vd_type == 255:
            break
        if vd_type in (1, 2):
            for off in _VD_DATE_OFFSETS:
                image[base + off:base + off + 17] = _VD_DATE
            root = base + _VD_ROOT_RECORD
            image[root + 18:root + 25] = _DR_DATE
            extent, length = _u32(image, root + 2), _u32(image, root + 10)
            roots.append((extent, length))
        sector += 1
    for extent, length in roots:
        _pin_tree(image, extent, length)


def _pin_tree(image: bytearray, root_extent: int, root_length: int) -> None:
    pending = [(root_extent, root_length)]
    seen: set[int] = set()
    skip = 0  # SUSP SP "bytes skipped" value, learnt from the root's "." record
    while pending:
        extent, length = pending.pop()
        if extent in seen:
            continue
        seen.add(extent)
        if len(seen) > _MAX_DIRECTORIES:
            raise SeedError("internal: ISO directory tree is too large for a seed")
        pos, end = extent * _SECTOR, extent * _SECTOR + length
        if end > len(image):
            raise SeedError("internal: ISO directory extent lies outside the image")
        while pos < end:
            rec_len = image[pos]
            if rec_len == 0:  # records never cross a sector: the rest of this sector is padding
                pos = (pos // _SECTOR + 1) * _SECTOR
                continue
            if rec_len < 34 or pos + rec_len > end:
                raise SeedError("internal: malformed ISO directory record")
            image[pos + 18:pos + 25] = _DR_DATE
            name_len = image[pos + 32]
            name = bytes(image[pos + 33:pos + 33 + name_len])
            su_start = pos + 33 + name_len + (1 - name_len % 2)
            is_root_dot = name == b"\x00" and extent == root_extent
            sp_skip = _pin_susp(image, su_start + (0 if is_root_dot else skip), pos + rec_len)
            if is_root_dot and sp_skip is not None:
                skip = sp_skip
            if image[pos + 25] & 0x02 and name not in (b"\x00", b"\x01"):
                pending.append((_u32(image, pos + 2), _u32(image, pos + 10)))
            pos += rec_len


def _pin_susp(image: bytearray, pos: int, end: int) -> int | None:
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
                _pin_tf(image, pos, entry_len)
            elif sig == b"ST":
                break
            pos += entry_len
        if continuation is None:
            return sp_skip
        hops += 1
        if hops > 64:
            raise SeedError("internal: too many Rock Ridge continuation areas")
        pos, end = continuation[0], continuation[0] + continuation[1]
        if end > len(image):
            raise SeedError("internal: Rock Ridge continuation area lies outside the image")


def _pin_tf(image: bytearray, pos: int, entry_len: int) -> None:
    flags = image[pos + 4]
    long_form = bool(flags & 0x80)
    size, stamp = (17, _VD_DATE) if long_form else (7, _DR_DATE)
    count = bin(flags & 0x7F).count("1")
    if 5 + count * size != entry_len:
        raise SeedError("internal: Rock Ridge TF entry length does not match its flags")
    for i in range(count):
        off = pos + 5 + i * size
        image[off:off + size] = stamp


def _u32(image: bytearray | bytes, off: int) -> int:
    value: int = struct.unpack_from("<I", image, off)[0]
    return value


def _volume_label(image: bytes, where: str) -> str:
    base = _FIRST_VD_SECTOR * _SECTOR
    if len(image) < base + _SECTOR or image[base + 1:base + 6] != b"CD001" or image[base] != 1:
        raise SeedError(f"{where}: not an ISO9660 image (no primary volume descriptor at sector 16); "
                        "a NoCloud seed must be an ISO labelled CIDATA")
    return image[base + 40:base + 72].decode("ascii", "replace").rstrip(" ")


# --- small filesystem helpers --------------------------------------------------------------------


def _sha256_of_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _make_private_dirs(directory: Path) -> None:
    """``mkdir -p`` where every directory this call creates gets mode 0700 (umask notwithstanding)."""
    missing: list[Path] = []
    d = directory
    while not d.exists():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            continue  # created concurrently: keep the other writer's directory as it is
        d.chmod(0o700)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems refuse fsync on directories; the rename is done
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
