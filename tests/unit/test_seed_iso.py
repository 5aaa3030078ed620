"""Seed ISOs: reproducible bytes whatever the clock, TZ or thread; atomic idempotent writes; read-back."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pycdlib
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.errors import InputError, SeedError
from edgefleet.seeds.iso import (
    MAX_SEED_ISO_BYTES,
    SeedFiles,
    read_seed_iso,
    render_seed_iso,
    write_seed_iso,
)

FILES = SeedFiles(
    user_data=b"version: v1alpha1\nmachine:\n  type: controlplane\n---\nkind: KmsgLogConfig\nname: c\n",
    meta_data=b"instance-id: s1-n1-0001\nlocal-hostname: s1-n1\n",
    network_config=b"version: 2\nethernets:\n  lan0:\n    match:\n      macaddress: '52:54:00:00:00:01'\n",
)

# Renders in a fresh interpreter with a given TZ and, optionally, a given wall clock. Setting the
# clock by replacing time.time is fine *there*: that process is single-threaded and does nothing
# else. It prints the sha256 of our render and of pycdlib's raw output built the same way, so the
# test can also show that the raw output does depend on the clock/TZ (i.e. that it can fail).
_RENDER_SCRIPT = textwrap.dedent("""
    import hashlib, io, json, sys, time
    clock = sys.argv[1]
    if clock != "real":
        fixed = float(clock)
        time.time = lambda: fixed
    import pycdlib
    from edgefleet.seeds.iso import SeedFiles, render_seed_iso
    files = SeedFiles(*(bytes.fromhex(h) for h in sys.argv[2:5]))
    raw = pycdlib.PyCdlib()
    raw.new(interchange_level=3, vol_ident="CIDATA", joliet=3, rock_ridge="1.09")
    for n, rr, data in (("USER_DATA", "user-data", files.user_data), ("META_DATA", "meta-data", files.meta_data),
                        ("NETWORK_CONFIG", "network-config", files.network_config)):
        raw.add_fp(io.BytesIO(data), len(data), f"/{n}.;1", rr_name=rr, joliet_path=f"/{rr}")
    out = io.BytesIO()
    raw.write_fp(out)
    print(json.dumps({"ours": hashlib.sha256(render_seed_iso(files)).hexdigest(),
                      "raw": hashlib.sha256(out.getvalue()).hexdigest()}))
""")


def _render_elsewhere(tz: str, clock: str) -> dict[str, str]:
    env = dict(os.environ, TZ=tz)
    args = [FILES.user_data.hex(), FILES.meta_data.hex(), FILES.network_config.hex()]
    proc = subprocess.run([sys.executable, "-c", _RENDER_SCRIPT, clock, *args], env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    result: dict[str, str] = json.loads(proc.stdout)
    return result


def test_render_reads_back_through_rock_ridge() -> None:
    image = render_seed_iso(FILES)
    seed = read_seed_iso(image)
    assert seed.label == "CIDATA"
    assert seed.files == FILES
    assert seed.sha256 == hashlib.sha256(image).hexdigest()
    assert len(image) % 2048 == 0


def test_render_has_iso9660_rock_ridge_and_joliet_names() -> None:
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(render_seed_iso(FILES)))
    try:
        iso_recs = [c for c in iso.list_children(iso_path="/") if not (c.is_dot() or c.is_dotdot())]
        joliet_recs = [c for c in iso.list_children(joliet_path="/") if not (c.is_dot() or c.is_dotdot())]
        iso_names = sorted(c.file_identifier().decode() for c in iso_recs)
        rr_names = sorted(c.rock_ridge.name().decode() for c in iso_recs)
        joliet_names = sorted(c.file_identifier().decode("utf-16-be") for c in joliet_recs)
    finally:
        iso.close()
    assert iso_names == ["META_DATA.;1", "NETWORK_CONFIG.;1", "USER_DATA.;1"]
    assert rr_names == ["meta-data", "network-config", "user-data"]
    assert joliet_names == ["meta-data", "network-config", "user-data"]


def test_every_date_field_is_the_fixed_epoch() -> None:
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(render_seed_iso(FILES)))
    try:
        records = list(iso.list_children(iso_path="/")) + list(iso.list_children(joliet_path="/"))
        for rec in records:
            assert rec.date.record() == bytes([80, 1, 1, 0, 0, 0, 0])
            if rec.rock_ridge is not None and rec.rock_ridge.dr_entries.tf_record is not None:
                tf = rec.rock_ridge.dr_entries.tf_record
                stamps = [tf.creation_time, tf.access_time, tf.modification_time, tf.attribute_change_time]
                assert [s.record() for s in stamps if s is not None] == [bytes([80, 1, 1, 0, 0, 0, 0])] * sum(
                    s is not None for s in stamps)
        for vd in [iso.pvd, iso.joliet_vd]:
            assert vd.volume_creation_date.record() == b"1980010100000000\x00"
            assert vd.volume_effective_date.record() == b"1980010100000000\x00"
    finally:
        iso.close()
    image = render_seed_iso(FILES)
    assert image[16 * 2048 + 830:16 * 2048 + 847] == b"1980010100000000\x00"  # modification date


@pytest.mark.parametrize("tz", ["UTC", "America/St_Johns", "Pacific/Chatham", "Asia/Kathmandu",
                                "Pacific/Kiritimati", "Europe/Copenhagen"])
def test_bytes_do_not_depend_on_tz(tz: str) -> None:
    here = hashlib.sha256(render_seed_iso(FILES)).hexdigest()
    assert _render_elsewhere(tz, "real")["ours"] == here


def test_bytes_do_not_depend_on_the_clock() -> None:
    here = hashlib.sha256(render_seed_iso(FILES)).hexdigest()
    # the epoch, a leap-second-ish end of year, after 2038, far future, sub-second fractions
    for tz, clock in [("UTC", "0"), ("America/St_Johns", "1483228799.999"), ("Pacific/Chatham", "2147483700.5"),
                      ("Asia/Kathmandu", "4102444800.25"), ("UTC", "1790000000")]:
        assert _render_elsewhere(tz, clock)["ours"] == here, (tz, clock)


def test_raw_pycdlib_output_does_depend_on_clock_and_tz() -> None:
    """The check above can fail: without the date pinning the bytes differ."""
    a = _render_elsewhere("UTC", "1790000000")["raw"]
    b = _render_elsewhere("Pacific/Chatham", "1790000000")["raw"]
    c = _render_elsewhere("UTC", "1790003600")["raw"]
    assert len({a, b, c}) == 3


def test_concurrent_renders_in_threads_are_identical() -> None:
    variants = [SeedFiles(FILES.user_data + f"# {i}\n".encode(), FILES.meta_data, FILES.network_config)
                for i in range(8)]
    expected = [render_seed_iso(v) for v in variants]
    start = threading.Barrier(8)

    def work(i: int) -> list[bytes]:
        start.wait()
        return [render_seed_iso(variants[(i + k) % 8]) for k in range(25)]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    for i, outs in enumerate(results):
        for k, out in enumerate(outs):
            assert out == expected[(i + k) % 8]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=5000), st.binary(max_size=300), st.binary(max_size=3000))
def test_any_content_round_trips(user_data: bytes, meta_data: bytes, network_config: bytes) -> None:
    files = SeedFiles(user_data, meta_data, network_config)
    image = render_seed_iso(files)
    assert read_seed_iso(image).files == files
    assert render_seed_iso(files) == image


def test_different_content_gives_different_bytes() -> None:
    other = SeedFiles(FILES.user_data, FILES.meta_data.replace(b"0001", b"0002"), FILES.network_config)
    assert render_seed_iso(other) != render_seed_iso(FILES)


# --- write_seed_iso ------------------------------------------------------------------------------


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_write_creates_private_dirs_and_file(tmp_path: Path) -> None:
    target = tmp_path / "out" / "seeds" / "store-0001" / "n1.iso"
    result = write_seed_iso(target, FILES)
    assert result.changed and result.path == target
    data = target.read_bytes()
    assert data == render_seed_iso(FILES)
    assert result.sha256 == hashlib.sha256(data).hexdigest() and result.size == len(data)
    assert _mode(target) == 0o600
    for d in (tmp_path / "out", tmp_path / "out" / "seeds", tmp_path / "out" / "seeds" / "store-0001"):
        assert _mode(d) == 0o700
    assert sorted(p.name for p in target.parent.iterdir()) == ["n1.iso"]


def test_write_is_skipped_when_bytes_match(tmp_path: Path) -> None:
    target = tmp_path / "n1.iso"
    first = write_seed_iso(target, FILES)
    inode, mtime = target.stat().st_ino, target.stat().st_mtime_ns
    target.chmod(0o644)
    second = write_seed_iso(target, FILES)
    assert first.changed and not second.changed
    assert second.sha256 == first.sha256
    assert (target.stat().st_ino, target.stat().st_mtime_ns) == (inode, mtime)
    assert _mode(target) == 0o600


def test_write_replaces_changed_content_atomically(tmp_path: Path) -> None:
    target = tmp_path / "n1.iso"
    write_seed_iso(target, FILES)
    inode = target.stat().st_ino
    other = SeedFiles(FILES.user_data + b"# changed\n", FILES.meta_data, FILES.network_config)
    result = write_seed_iso(target, other)
    assert result.changed
    assert target.stat().st_ino != inode  # a new file renamed over the old one, never rewritten in place
    assert read_seed_iso(target).files == other
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n1.iso"]


def test_write_replaces_a_corrupt_file_of_the_same_size(tmp_path: Path) -> None:
    target = tmp_path / "n1.iso"
    write_seed_iso(target, FILES)
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    assert write_seed_iso(target, FILES).changed
    assert target.read_bytes() == render_seed_iso(FILES)


# --- read_seed_iso errors ------------------------------------------------------------------------


def _iso(label: str, names: list[str], *, rock_ridge: bool = True, joliet: bool = True) -> bytes:
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=label, joliet=3 if joliet else None,
            rock_ridge="1.09" if rock_ridge else None)
    for name in names:
        iso_name = "/" + name.upper().replace("-", "_") + ".;1"
        iso.add_fp(io.BytesIO(b"x: 1\n"), 5, iso_name, rr_name=name if rock_ridge else None,
                   joliet_path=f"/{name}" if joliet else None)
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


def test_read_accepts_joliet_only_and_lower_case_label() -> None:
    seed = read_seed_iso(_iso("cidata", ["user-data", "meta-data", "network-config"], rock_ridge=False))
    assert seed.label == "cidata"
    assert seed.files == SeedFiles(b"x: 1\n", b"x: 1\n", b"x: 1\n")


@pytest.mark.parametrize(("image", "message"), [
    (b"", "not an ISO9660 image"),
    (b"\x00" * 80_000, "not an ISO9660 image"),
    (_iso("CONFIG2", ["user-data", "meta-data", "network-config"]), "labelled 'CIDATA'"),
    (_iso("CIDATA", ["user-data", "meta-data"]), "no /network-config"),
    (_iso("CIDATA", ["user-data", "meta-data", "network-config"], rock_ridge=False, joliet=False),
     "neither Rock Ridge nor Joliet"),
])
def test_read_rejects_what_is_not_a_seed(image: bytes, message: str) -> None:
    with pytest.raises(SeedError, match=message) as info:
        read_seed_iso(image)
    assert isinstance(info.value, InputError) and info.value.exit_code == 2


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.iso"
    with pytest.raises(SeedError, match=r"nope\.iso: cannot read"):
        read_seed_iso(missing)
    big = tmp_path / "release.iso"
    with big.open("wb") as fh:
        fh.truncate(MAX_SEED_ISO_BYTES + 1)
    with pytest.raises(SeedError, match=r"release\.iso: .* too large"):
        read_seed_iso(big)
    truncated = tmp_path / "trunc.iso"
    truncated.write_bytes(render_seed_iso(FILES)[: 17 * 2048])
    with pytest.raises(SeedError, match=r"trunc\.iso"):
        read_seed_iso(truncated)
