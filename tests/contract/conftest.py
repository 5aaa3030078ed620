"""Fixtures for contract tests: cloud-init's real NoCloud reader and realistic seed contents."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("cloudinit_nocloud_driver.py")


@dataclass(frozen=True)
class CloudInit:
    """An unpacked (not installed) cloud-init with its own interpreter."""

    root: Path

    @property
    def python(self) -> Path:
        return self.root / "venv" / "bin" / "python"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env["PYTHONPATH"] = str(self.root / "root" / "usr" / "lib" / "python3" / "dist-packages")
        return env

    def read_nocloud(self, iso: Path, workdir: Path) -> dict[str, Any]:
        """Let cloud-init's DataSourceNoCloud read ``iso``; return what it found (see the driver)."""
        workdir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([str(self.python), str(DRIVER), str(iso), str(workdir)], env=self.env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, f"cloud-init driver failed:\n{proc.stderr[-4000:]}"
        result: dict[str, Any] = json.loads(proc.stdout)
        result["userdata_raw"] = base64.b64decode(result.pop("userdata_raw_b64"))
        return result

    def net_convert(self, network_config: Path, out_dir: Path, *, distro: str, output: str
                    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.python), "-m", "cloudinit.cmd.main", "devel", "net-convert", "-p", str(network_config),
             "-k", "yaml", "-D", distro, "-O", output, "-d", str(out_dir)],
            env=self.env, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="session")
def cloudinit() -> CloudInit:
    """cloud-init from $EDGEFLEET_CLOUDINIT_ROOT (or .cache/cloud-init); skipped if absent, unless CI=true."""
    configured = os.environ.get("EDGEFLEET_CLOUDINIT_ROOT")
    root = Path(configured) if configured else REPO / ".cache" / "cloud-init"
    ci = CloudInit(root)
    module = ci.root / "root" / "usr" / "lib" / "python3" / "dist-packages" / "cloudinit" / "sources"
    if not ci.python.exists() or not (module / "DataSourceNoCloud.py").exists():
        reason = (f"cloud-init is not prepared in {root} (run `scripts/ensure-cloud-init {root}` "
                  "or `make setup`)")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return ci


# --- realistic seed contents ---------------------------------------------------------------------

TALOS_USER_DATA = b"""\
version: v1alpha1
debug: false
persist: true
machine:
  type: controlplane
  token: 6p8h2x.k3l0v9qv2m4s7z1c
  ca:
    crt: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJQekNCOHFBREFnRUNBaEVBLi4uCi0tLS0tRU5EIENFUlRJRklDQVRFLS0tLS0K
    key: LS0tLS1CRUdJTiBFRDI1NTE5IFBSSVZBVEUgS0VZLS0tLS0KTUM0Q0FRQXdCUVlESzJWd0JDSUVJLi4uCg==
  certSANs: [10.20.1.10, store-0001-cp.example.net]
  kubelet:
    image: ghcr.io/siderolabs/kubelet:v1.31.2
    nodeIP:
      validSubnets: [10.20.1.0/24]
  network:
    hostname: store-0001-n1
  install:
    disk: /dev/sda
    image: ghcr.io/siderolabs/installer:v1.8.3
    wipe: true
  time:
    servers: [10.20.1.1]
cluster:
  id: ZmFrZS1jbHVzdGVyLWlkLWZvci10ZXN0cw==
  secret: c2VjcmV0LWZvci10ZXN0cy1vbmx5LW5vdC1yZWFs
  controlPlane:
    endpoint: https://10.20.1.10:6443
  clusterName: store-0001
  network:
    dnsDomain: cluster.local
    podSubnets: [10.244.0.0/16]
    serviceSubnets: [10.96.0.0/12]
  allowSchedulingOnControlPlanes: true
---
apiVersion: v1alpha1
kind: ExtensionServiceConfig
name: store-agent
environment:
  - STORE_ID=0001
  - REGION=eu-north
---
apiVersion: v1alpha1
kind: KmsgLogConfig
name: central
url: udp://10.20.0.5:6050/
"""

TALOS_META_DATA = b"instance-id: store-0001-n1-3f9c2a\nlocal-hostname: store-0001-n1\n"

NETWORK_CONFIG_SINGLE = b"""\
version: 2
ethernets:
  lan0:
    match:
      macaddress: "52:54:00:12:34:56"
    set-name: lan0
    addresses: [10.20.1.11/24]
    routes:
      - to: 0.0.0.0/0
        via: 10.20.1.1
    nameservers:
      addresses: [10.20.1.1, 1.1.1.1]
      search: [store-0001.example.net]
"""

NETWORK_CONFIG_DUAL_STACK = b"""\
version: 2
ethernets:
  uplink:
    match:
      macaddress: "0c:c4:7a:aa:bb:01"
    set-name: uplink
    mtu: 1500
    addresses:
      - 10.20.7.21/24
      - fd00:20:7::21/64
    routes:
      - to: 0.0.0.0/0
        via: 10.20.7.1
      - to: ::/0
        via: fd00:20:7::1
      - to: 10.99.0.0/16
        via: 10.20.7.254
        metric: 200
    nameservers:
      addresses: [10.20.7.1, fd00:20:7::1]
      search: [store-0007.example.net, example.net]
  storage:
    match:
      macaddress: "0c:c4:7a:aa:bb:02"
    set-name: storage
    addresses: [10.30.7.21/24]
"""


NETWORK_CONFIG_IPV6_ONLY = b"""\
version: 2
ethernets:
  uplink:
    match:
      macaddress: "0c:c4:7a:aa:bb:09"
    dhcp4: false
    dhcp6: false
    addresses:
      - 2001:db8:20:9::21/64
    gateway6: 2001:db8:20:9::1
    nameservers:
      addresses: [2001:db8:20::53]
"""

@dataclass(frozen=True)
class SeedExample:
    name: str
    user_data: bytes
    meta_data: bytes
    network_config: bytes


SEED_EXAMPLES: tuple[SeedExample, ...] = (
    SeedExample("talos-controlplane", TALOS_USER_DATA, TALOS_META_DATA, NETWORK_CONFIG_SINGLE),
    SeedExample("talos-worker-dual-stack",
                TALOS_USER_DATA.replace(b"type: controlplane", b"type: worker")
                .replace(b"store-0001-n1", b"store-0007-n2"),
                b"instance-id: store-0007-n2-77aa01\nlocal-hostname: store-0007-n2\n",
                NETWORK_CONFIG_DUAL_STACK),
    SeedExample("talos-controlplane-ipv6-only",
                TALOS_USER_DATA.replace(b"https://10.20.1.10:6443", b"https://[2001:db8:20:9::10]:6443")
                .replace(b"store-0001-n1", b"store-0009-n1"),
                b"instance-id: store-0009-n1-9d0e11\nlocal-hostname: store-0009-n1\n", NETWORK_CONFIG_IPV6_ONLY),
    SeedExample("utf8-and-crlf", "# kommentar: blåbærgrød\r\nversion: v1alpha1\r\n".encode(),
                "instance-id: i-ø1\nlocal-hostname: kasse-1\n".encode(), NETWORK_CONFIG_SINGLE),
)

NETWORK_CONFIG_EXAMPLES: dict[str, bytes] = {
    "single": NETWORK_CONFIG_SINGLE,
    "dual-stack": NETWORK_CONFIG_DUAL_STACK,
    "ipv6-only": NETWORK_CONFIG_IPV6_ONLY,
}


@pytest.fixture(params=SEED_EXAMPLES, ids=[e.name for e in SEED_EXAMPLES])
def seed_example(request: pytest.FixtureRequest) -> SeedExample:
    """Each realistic seed content in turn (tests using it run once per example)."""
    example: SeedExample = request.param
    return example


@pytest.fixture(params=sorted(NETWORK_CONFIG_EXAMPLES), ids=sorted(NETWORK_CONFIG_EXAMPLES))
def network_config_example(request: pytest.FixtureRequest) -> bytes:
    """Each network-config v2 example in turn."""
    return NETWORK_CONFIG_EXAMPLES[request.param]
