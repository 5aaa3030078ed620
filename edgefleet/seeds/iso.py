"""NoCloud seed ISOs: render them byte-for-byte reproducibly, write them atomically, read them back.

A seed ISO is what cloud-init's NoCloud datasource (and Talos' ``nocloud`` platform) looks for: an
ISO9660 volume labelled ``CIDATA`` holding ``user-data``, ``meta-data`` and ``network-config``.
Names are ISO9660 level 3 (``/USER_DATA.;1``) with the real names carried twice, as Rock Ridge
(read by Linux/Talos) and as Joliet names (read by everything else); without them cloud-init does
not find the files.

Reproducibility: pycdlib stamps the wall clock and TZ into every date field and has no option to
pass a date, so :func:`render_seed_iso` lets pycdlib build the image and then pins every date field
to :data:`SEED_EPOCH` with :func:`edgefleet.isodates.pin_iso_dates`, a pure walk over the bytes (no
patched global, so concurrent renders cannot interfere); the tests render under several TZ values
and clocks in separate processes and in threads and compare the bytes.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from edgefleet.atomic import AtomicBatch
from edgefleet.errors import SeedError
from edgefleet.isodates import DEFAULT_WHEN, IsoLayoutError, pin_iso_dates
from edgefleet.seeds.render import SeedFiles  # defined with the renderer (pure), re-exported here

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
    "write_seed_isos",
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
_MAX_DIRECTORIES = 1024  # bounds the walk on a malformed image


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
    try:
        pin_iso_dates(image, DEFAULT_WHEN, max_directories=_MAX_DIRECTORIES)
    except IsoLayoutError as e:
        raise SeedError(f"internal: {e}") from e
    return bytes(image)


def write_seed_iso(path: Path, files: SeedFiles) -> SeedWrite:
    """Write the seed ISO to ``path`` atomically (mode 0600); do nothing if it already has these bytes.

    Missing parent directories are created with mode 0700 (seeds hold cluster secrets). A file that
    already has the right bytes is left alone (``changed=False``); only its mode is corrected.
    """
    return write_seed_isos([(path, files)])[0]


def write_seed_isos(items: Sequence[tuple[Path, SeedFiles]]) -> list[SeedWrite]:
    """``write_seed_iso`` for many files at once, with the same guarantees: each file is replaced
    atomically and only after its bytes are on disk, so a crash leaves every seed either old or new.

    One file: fsync it, rename, fsync its directory. Many: write every temporary file, make them all
    durable with one ``os.sync()``, rename them all, and make the renames durable with a second
    ``os.sync()``. Two flushes for a whole batch instead of two per file: per-file fsyncs cost more
    than rendering the ISOs themselves.
    """
    results: list[SeedWrite] = []
    with AtomicBatch(mode=0o600, single=len(items) == 1) as batch:
        for path, files in items:
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
                results.append(SeedWrite(path=path, sha256=digest, changed=False, size=len(image)))
                continue
            batch.add(path, image)
            results.append(SeedWrite(path=path, sha256=digest, changed=True, size=len(image)))
        batch.commit()
    return results


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


def _volume_label(image: bytes, where: str) -> str:
    base = _FIRST_VD_SECTOR * _SECTOR
    if len(image) < base + _SECTOR or image[base + 1:base + 6] != b"CD001" or image[base] != 1:
        raise SeedError(f"{where}: not an ISO9660 image (no primary volume descriptor at sector 16); "
                        "a NoCloud seed must be an ISO labelled CIDATA")
    return image[base + 40:base + 72].decode("ascii", "replace").rstrip(" ")


# --- small filesystem helpers --------------------------------------------------------------------


def _sha256_of_file(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


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
