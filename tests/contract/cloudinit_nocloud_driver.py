"""Run cloud-init's own NoCloud datasource against one seed ISO file and print what it read, as JSON.

Runs under cloud-init's interpreter (its unpacked tree on PYTHONPATH), not edgefleet's:

    python cloudinit_nocloud_driver.py SEED.iso WORKDIR

Only the two places where cloud-init touches block devices are redirected, everything else is
cloud-init's code path on a booting machine:

* ``util.find_devs_with`` still runs cloud-init's own blkid query (``blkid -tTYPE=iso9660 ...``),
  but with the ISO file as the only candidate device instead of every block device;
* ``util.mount_cb`` extracts the ISO with xorriso (an independent ISO9660/Rock Ridge reader)
  instead of mounting it, then calls cloud-init's callback on the extracted directory.

cloud-init swallows an OSError(ENOENT) raised inside mount_cb and reports "no seed" (a missing
xorriso would look exactly like a bad ISO), so every OSError in the extraction is re-raised as a
RuntimeError that reaches the output.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import tempfile


def main() -> int:
    iso, workdir = sys.argv[1], sys.argv[2]
    from cloudinit import helpers, util
    from cloudinit.sources import DataSourceNoCloud as nocloud_mod

    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(f"{record.levelname} {record.name}: {record.getMessage()}")

    logging.getLogger().addHandler(Collect())
    logging.getLogger().setLevel(logging.DEBUG)

    real_find_devs_with = util.find_devs_with
    probed: list[str] = []

    def find_devs_with(criteria=None, oformat="device", tag=None, no_cache=False, path=None):  # type: ignore[no-untyped-def]
        probed.append(str(criteria))
        return real_find_devs_with(criteria, oformat=oformat, tag=tag, no_cache=True, path=iso)

    mounted: list[str] = []

    def mount_cb(device, callback, data=None, mtype=None, update_env_for_mount=None):  # type: ignore[no-untyped-def]
        with tempfile.TemporaryDirectory(dir=workdir) as mnt:
            try:
                proc = subprocess.run(
                    ["xorriso", "-osirrox", "on", "-indev", device, "-extract", "/", mnt],
                    capture_output=True, text=True, timeout=60, check=False,
                )
            except OSError as exc:
                raise RuntimeError(f"cannot run xorriso to extract {device}: {exc}") from exc
            if proc.returncode != 0:
                raise RuntimeError(f"xorriso failed on {device}: {proc.stderr[-2000:]}")
            mounted.append(device)
            return callback(mnt, data)

    util.find_devs_with = find_devs_with
    util.mount_cb = mount_cb
    paths = helpers.Paths({"cloud_dir": os.path.join(workdir, "cloud"), "run_dir": os.path.join(workdir, "run")})
    ds = nocloud_mod.DataSourceNoCloud(sys_cfg={}, distro=None, paths=paths)
    found = ds.get_data()
    user_data = ds.userdata_raw
    if isinstance(user_data, str):
        user_data = user_data.encode()
    json.dump({
        "found": bool(found),
        "seed": ds.seed,
        "probed": probed,
        "mounted": mounted,
        "metadata": ds.metadata,
        "userdata_raw_b64": base64.b64encode(user_data or b"").decode(),
        "network_config": ds.network_config if found else None,
        "log": records[-200:],
    }, sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
