"""nocloud-net seeds, the pure parts: token scopes and URLs, the ds= strings a node is provisioned
with (and reads back), redaction, and the release a machine config names."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.errors import SeedError
from edgefleet.inventory.model import Store
from edgefleet.seeds.netseed import (
    NetSeeds,
    nocloud_datasource,
    nocloud_net_url,
    nocloud_scope,
    parse_nocloud_datasource,
    qemu_smbios_arg,
    redact_seed_url,
)
from edgefleet.seeds.server import SeedServer, check_token
from edgefleet.sim.netseed import release_from_config

pytestmark = pytest.mark.clock  # certificates, tokens or TLS meet the real clock: run again under faketime

NOW = datetime(2026, 11, 25, 23, 0, tzinfo=UTC)
SECRET = b"k" * 32


def _store(seed_url: str | None = None) -> Store:
    return Store.model_validate({
        "id": "dk-0001", "name": "DK 1", "country": "DK", "region": "nordics", "timezone": "Europe/Copenhagen",
        "maintenance_windows": [{"days": ["daily"], "start": "22:00", "end": "05:00"}],
        "network": {"subnet": "10.20.0.0/24", "gateway": "10.20.0.1", "dns": ["10.0.0.53"]},
        "cluster": {"name": "dk-0001"}, "wipe_method": "talos-api", "seed_url": seed_url,
        "nodes": [{"name": "dk-0001-n1", "role": "controlplane", "mac": "02:ef:00:00:00:01", "ip": "10.20.0.10"}]})


def _server(tmp_path: Path) -> SeedServer:
    return SeedServer(tmp_path, public_url="http://127.0.0.1:8099", secret=SECRET, token_ttl_s=3600)


def test_the_url_grants_the_three_files_of_that_node_only(tmp_path: Path) -> None:
    store = _store()
    node = store.nodes[0]
    url = nocloud_net_url(_server(tmp_path), store, node, NOW)
    assert url.startswith("http://127.0.0.1:8099/") and url.endswith("/nocloud/dk-0001/dk-0001-n1/")
    token = urlsplit(url).path.split("/")[1]
    at = NOW.timestamp() + 10
    assert check_token(SECRET, token, nocloud_scope("dk-0001", "dk-0001-n1"), at) == ("dk-0001-n1", "")
    # not another node's files, not a file under the root with the same name
    assert check_token(SECRET, token, nocloud_scope("dk-0001", "dk-0001-n2"), at)[0] is None
    assert check_token(SECRET, token, "nocloud/dk-0001/dk-0001-n1", at)[0] is None
    # expiry: the server's TTL, or the one asked for
    assert check_token(SECRET, token, nocloud_scope("dk-0001", "dk-0001-n1"), NOW.timestamp() + 3601)[1] == (
        "token expired")
    long = nocloud_net_url(_server(tmp_path), store, node, NOW, ttl_s=30 * 86400)
    token = urlsplit(long).path.split("/")[1]
    assert check_token(SECRET, token, nocloud_scope("dk-0001", "dk-0001-n1"), NOW.timestamp() + 29 * 86400)[0]


def test_the_store_seed_url_is_the_base_its_nodes_use(tmp_path: Path) -> None:
    store = _store("https://seeds.dk.example:8443/edge/")
    url = nocloud_net_url(_server(tmp_path), store, store.nodes[0], NOW)
    assert url.startswith("https://seeds.dk.example:8443/edge/") and url.endswith("/nocloud/dk-0001/dk-0001-n1/")
    with pytest.raises(SeedError, match="seed_url"):
        nocloud_net_url(_server(tmp_path), _store("seeds.dk.example"), store.nodes[0], NOW)


def test_scopes_cannot_be_file_paths() -> None:
    assert "\x00" in nocloud_scope("s", "n")
    for store, node in (("", "n"), ("s", ""), ("s/x", "n"), ("s", "n\x00")):
        with pytest.raises(SeedError):
            nocloud_scope(store, node)


def test_a_scoped_url_needs_a_scope_no_file_can_have(tmp_path: Path) -> None:
    with pytest.raises(SeedError, match="NUL"):
        _server(tmp_path).scoped_url("nocloud/s/n", "nocloud/s/n/", "n", NOW)


def test_datasource_strings() -> None:
    url = "http://10.20.0.2:8080/tok.123.x/nocloud/dk-0001/dk-0001-n1/"
    assert nocloud_datasource(url) == f"ds=nocloud-net;s={url}"
    assert qemu_smbios_arg("http://h/a,b/") == "type=1,serial=ds=nocloud-net;s=http://h/a,,b/"
    for bad, why in (("http://h/x", "end with"), ("ftp://h/x/", "http"), ("http://h/a b/", "spaces"),
                     ("http://h/a;b/", "';'"), ("/local/dir/", "http")):
        with pytest.raises(SeedError, match=why):
            nocloud_datasource(bad)


def test_a_node_reads_its_url_back_from_a_kernel_command_line_or_serial() -> None:
    url = "https://seeds.example/t/nocloud/s/n/"
    cmdline = f"console=ttyS0 talos.platform=nocloud {nocloud_datasource(url)} slab_nomerge pti=on"
    assert parse_nocloud_datasource(cmdline) == url
    assert parse_nocloud_datasource(f"ds=nocloud;s={url};h=n1") == url
    assert parse_nocloud_datasource(f"ds=nocloud-net;seedfrom={url}") == url
    assert parse_nocloud_datasource("talos.platform=nocloud") is None
    assert parse_nocloud_datasource("ds=nocloud;s=file:///var/seed/") is None
    assert parse_nocloud_datasource("ds=nocloudy;s=http://h/") is None


@given(st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~", min_size=1, max_size=12),
                min_size=0, max_size=4),
       st.sampled_from(["http", "https"]), st.integers(min_value=1, max_value=65535))
def test_datasource_round_trip(segments: list[str], scheme: str, port: int) -> None:
    url = f"{scheme}://127.0.0.1:{port}/" + "".join(s + "/" for s in segments)
    assert parse_nocloud_datasource(nocloud_datasource(url)) == url


def test_redaction_removes_only_the_token(tmp_path: Path) -> None:
    store = _store()
    url = nocloud_net_url(_server(tmp_path), store, store.nodes[0], NOW)
    assert redact_seed_url(url) == "http://127.0.0.1:8099/<token>/nocloud/dk-0001/dk-0001-n1/"
    assert redact_seed_url(url + "meta-data").endswith("/<token>/nocloud/dk-0001/dk-0001-n1/meta-data")
    assert redact_seed_url("http://h/plain/path/") == "http://h/plain/path/"


def test_route_scopes_only_the_three_nocloud_files() -> None:
    seeds = NetSeeds()
    assert seeds.scope(["dk-0001", "dk-0001-n1", "meta-data"]) == nocloud_scope("dk-0001", "dk-0001-n1")
    for name in ("user-data", "network-config"):
        assert seeds.scope(["s", "n", name]) is not None
    for segs in (["s", "n", "vendor-data"], ["s", "n"], ["s", "n", "meta-data", "x"], ["", "n", "meta-data"]):
        assert seeds.scope(segs) is None


def test_publish_needs_an_existing_seed(tmp_path: Path) -> None:
    seeds = NetSeeds()
    with pytest.raises(SeedError, match="does not exist"):
        seeds.publish("s", "n", tmp_path / "n.iso")
    (tmp_path / "n.iso").write_bytes(b"x")
    seeds.publish("s", "n", tmp_path / "n.iso")
    assert seeds.published("s", "n") == tmp_path / "n.iso"
    assert seeds.withdraw("s", "n") and not seeds.withdraw("s", "n")


def test_release_named_by_a_machine_config() -> None:
    cfg = b"""\
version: v1alpha1
machine:
  type: worker
  install:
    disk: /dev/sda
    image: factory.talos.dev/installer/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba:v1.12.7
  kubelet: {image: "ghcr.io/siderolabs/kubelet:v1.35.1"}
  nodeLabels: {edgefleet.io/release: r2026.11, edgefleet.io/store: dk-0001}
---
apiVersion: v1alpha1
kind: HostnameConfig
hostname: dk-0001-n2
"""
    got = release_from_config(cfg)
    assert (got.release, got.talos_version, got.kubernetes_version) == ("r2026.11", "v1.12.7", "v1.35.1")
    assert release_from_config(b"#cloud-config\n").release is None
    assert release_from_config(b"version: v1alpha1\nmachine: {install: {image: registry:5000/installer}}\n"
                               ).talos_version is None  # a registry port is not a tag
    assert release_from_config(b": : not yaml [").talos_version is None
