"""Release builds with the real packer binary on the real template in packer/release.

Every failure case checks that no release is left behind: no catalog row, no release directory,
no temporary build directory.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgefleet.errors import ArtifactError, PackerError, ReleaseInputError, ToolMissing
from edgefleet.releases.build import ReleaseSpec, build_release, default_template_dir
from edgefleet.releases.catalog import ReleaseCatalog, ReleaseState, verify_artifact
from edgefleet.releases.image import read_kernel_args, read_release_manifest
from edgefleet.releases.packer import validate
from edgefleet.releases.template import template_hash
from edgefleet.releases.upstream import sha256_file, write_fake_upstream
from edgefleet.state.db import create_state_engine
from tests.helpers import REPO, require_tool

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True, scope="module")
def _packer() -> None:
    require_tool(shutil.which("packer"), "packer (Debian package `packer`)")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("upstream") / "talos-v1.12.6.iso"
    return path, write_fake_upstream(path, "v1.12.6")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def catalog(home: Path) -> Iterator[ReleaseCatalog]:
    engine = create_state_engine(f"sqlite:///{home / 'edgefleet.db'}")
    yield ReleaseCatalog(engine)
    engine.dispose()


def _spec(upstream: tuple[Path, str], **over: object) -> ReleaseSpec:
    base: dict[str, object] = dict(name="store-2026.11", talos_version="v1.12.6", upstream_iso=str(upstream[0]),
                                   upstream_sha256=upstream[1],
                                   kernel_args=("talos.platform=nocloud", "console=ttyS0,115200"))
    base.update(over)
    return ReleaseSpec(**base)  # type: ignore[arg-type]


def _assert_nothing_left(home: Path, catalog: ReleaseCatalog) -> None:
    assert catalog.list() == []
    releases = home / "releases"
    leftovers = list(releases.iterdir()) if releases.exists() else []
    assert leftovers == [], leftovers


def test_build_records_a_verified_release(upstream: tuple[Path, str], home: Path, catalog: ReleaseCatalog) -> None:
    lines: list[str] = []
    t0 = time.perf_counter()
    r = build_release(_spec(upstream, extensions=("siderolabs/iscsi-tools",),
                            installer_image="factory.talos.dev/installer/abc123:v1.12.6"),
                      home=home, catalog=catalog, progress=lines.append)
    seconds = time.perf_counter() - t0
    print(f"build time: {seconds:.2f} s")
    assert seconds < 30
    assert r.artifact_path == (home / "releases" / "store-2026.11" / "store-2026.11.iso").resolve()
    assert sorted(p.name for p in r.artifact_path.parent.iterdir()) == [
        "packer-manifest.json", "packer.log", "release.pkrvars.json", "store-2026.11.iso", "store-2026.11.iso.sha256"]
    assert catalog.get(r.name) == r and r.state is ReleaseState.built
    assert verify_artifact(r) == r.artifact_path
    assert r.sha256 == sha256_file(r.artifact_path)
    assert (r.artifact_path.parent / "store-2026.11.iso.sha256").read_text().split() == [r.sha256, r.artifact_path.name]
    assert r.template_hash == template_hash(default_template_dir())
    m = read_release_manifest(r.artifact_path)
    assert (m.release, m.talos_version, m.kubernetes_version, m.installer_image, m.extensions, m.upstream_sha256) == (
        "store-2026.11", "v1.12.6", "1.35.0", "factory.talos.dev/installer/abc123:v1.12.6",
        ("siderolabs/iscsi-tools",), upstream[1])
    assert list(m.kernel_args) == read_kernel_args(r.artifact_path) == list(r.kernel_args)
    assert m.kernel_args[-2:] == ("talos.platform=nocloud", "console=ttyS0,115200")
    pm = json.loads((r.artifact_path.parent / "packer-manifest.json").read_text())
    assert pm["builds"][0]["custom_data"]["release"] == "store-2026.11"
    assert any("remastered store-2026.11" in ln for ln in lines)
    assert any("Builds finished" in ln for ln in lines)
    with pytest.raises(ReleaseInputError, match=r"already exists"):
        build_release(_spec(upstream), home=home, catalog=catalog)
    assert verify_artifact(catalog.get(r.name)) == r.artifact_path


def test_same_inputs_give_the_same_image(upstream: tuple[Path, str], tmp_path: Path) -> None:
    shas = []
    for i in range(2):
        engine = create_state_engine(f"sqlite:///{tmp_path / f'h{i}' / 'db.sqlite'}")
        shas.append(build_release(_spec(upstream), home=tmp_path / f"h{i}", catalog=ReleaseCatalog(engine)).sha256)
        engine.dispose()
    assert shas[0] == shas[1]


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def server(upstream: tuple[Path, str]) -> Iterator[tuple[str, list[str]]]:
    requests: list[str] = []
    handler = functools.partial(type("H", (_CountingHandler,), {"requests": requests}),
                                directory=str(upstream[0].parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", requests
    httpd.shutdown()
    httpd.server_close()


def test_build_from_url_downloads_once_into_the_cache(upstream: tuple[Path, str], home: Path,
                                                      catalog: ReleaseCatalog, server: tuple[str, list[str]]) -> None:
    base, requests = server
    url = f"{base}/{upstream[0].name}"
    r1 = build_release(_spec(upstream, name="r1", upstream_iso=url), home=home, catalog=catalog)
    r2 = build_release(_spec(upstream, name="r2", upstream_iso=url), home=home, catalog=catalog)
    assert requests == [f"/{upstream[0].name}"]  # the second build used the verified cached copy
    assert (home / "cache" / "upstream" / f"{upstream[1]}.iso").is_file()
    assert read_release_manifest(r1.artifact_path).upstream_sha256 == upstream[1]
    assert r2.state is ReleaseState.built


def test_wrong_upstream_checksum_leaves_nothing(upstream: tuple[Path, str], home: Path, catalog: ReleaseCatalog,
                                                server: tuple[str, list[str]]) -> None:
    wrong = "f" * 64
    with pytest.raises(ArtifactError, match=rf"sha256 is {upstream[1]}, expected {wrong}"):
        build_release(_spec(upstream, upstream_sha256=wrong), home=home, catalog=catalog)
    _assert_nothing_left(home, catalog)
    url = f"{server[0]}/{upstream[0].name}"
    with pytest.raises(ArtifactError, match=r"downloaded sha256 .* \(nothing was cached\)"):
        build_release(_spec(upstream, upstream_iso=url, upstream_sha256=wrong), home=home, catalog=catalog)
    _assert_nothing_left(home, catalog)
    assert list((home / "cache" / "upstream").iterdir()) == []
    with pytest.raises(ArtifactError, match=r"HTTP 404"):
        build_release(_spec(upstream, upstream_iso=f"{server[0]}/missing.iso"), home=home, catalog=catalog)
    _assert_nothing_left(home, catalog)


def test_invalid_variables_leave_nothing(upstream: tuple[Path, str], home: Path, catalog: ReleaseCatalog,
                                        tmp_path: Path) -> None:
    # caught in Python before packer runs
    with pytest.raises(ReleaseInputError, match=r"must include talos.platform=nocloud"):
        build_release(_spec(upstream, kernel_args=("talos.platform=metal",)), home=home, catalog=catalog)
    _assert_nothing_left(home, catalog)
    # a rule that exists only in the template's validation block, evaluated from Python before packer
    strict = tmp_path / "template"
    shutil.copytree(default_template_dir(), strict)
    variables_file = strict / "variables.pkr.hcl"
    variables_file.write_text(variables_file.read_text().replace(
        "length(var.release_name) <= 63", "length(var.release_name) <= 5"))
    with pytest.raises(ReleaseInputError, match=r"release_name = \"store-2026.11\": The release_name must be"):
        build_release(_spec(upstream), home=home, catalog=catalog, template_dir=strict)
    _assert_nothing_left(home, catalog)


def test_packer_validate_enforces_the_nocloud_rule_by_itself(upstream: tuple[Path, str], tmp_path: Path) -> None:
    var_file = tmp_path / "v.pkrvars.json"
    var_file.write_text(json.dumps({
        "release_name": "r1", "talos_version": "v1.12.6", "upstream_iso": str(upstream[0]),
        "upstream_sha256": upstream[1], "installer_image": "x", "output_dir": str(tmp_path),
        "kernel_args": ["talos.platform=metal"]}))
    with pytest.raises(ReleaseInputError, match=r"must include talos.platform=nocloud"):
        validate(default_template_dir(), var_file)


AGREEMENT_CASES: list[dict[str, object]] = [
    {},
    {"release_name": "Upper"},
    {"release_name": "x" * 64},
    {"talos_version": "1.12.6"},
    {"talos_version": "v1"},
    {"kubernetes_version": "v1.35.0"},
    {"kubernetes_version": "1.3"},
    {"upstream_sha256": "A" * 64},
    {"upstream_sha256": "a" * 63},
    {"kernel_args": ["talos.platform=metal"]},
    {"kernel_args": ["console=ttyS0", "talos.platform=nocloud"]},
    {"installer_image": ""},
]


def test_python_validation_agrees_with_packer_validate(upstream: tuple[Path, str], tmp_path: Path) -> None:
    from edgefleet.releases.template import check_validations, load_template_variables

    variables = load_template_variables(default_template_dir())
    base = {"release_name": "r1", "talos_version": "v1.12.6", "upstream_iso": str(upstream[0]),
            "upstream_sha256": upstream[1], "installer_image": "x", "output_dir": str(tmp_path)}
    for i, case in enumerate(AGREEMENT_CASES):
        values = dict(base, **case)
        try:
            assert check_validations(variables, values) == []  # every rule of ours is decidable in Python
            python_ok = True
        except ReleaseInputError:
            python_ok = False
        var_file = tmp_path / f"case{i}.pkrvars.json"
        var_file.write_text(json.dumps(values))
        try:
            validate(default_template_dir(), var_file)
            packer_ok = True
        except ReleaseInputError:
            packer_ok = False
        assert python_ok == packer_ok, (case, python_ok, packer_ok)
    assert not all(c == {} for c in AGREEMENT_CASES[1:])


def test_demo_var_file_is_valid_and_pins_the_generated_upstream(upstream: tuple[Path, str]) -> None:
    demo = REPO / "packer" / "demo.pkrvars.hcl"
    validate(default_template_dir(), demo)
    assert f'upstream_sha256    = "{upstream[1]}"' in demo.read_text()


def test_artifact_tampered_during_the_build_is_refused(upstream: tuple[Path, str], home: Path,
                                                       catalog: ReleaseCatalog) -> None:
    tampered: list[Path] = []

    def tamper(line: str) -> None:
        # packer prints this after the checksum post-processor has written its file
        if "(type manifest)" in line:
            for iso in home.glob("releases/.building-*/out/*.iso"):
                with iso.open("ab") as f:
                    f.write(b"evil")
                tampered.append(iso)

    with pytest.raises(ArtifactError, match=r"the image changed during the build"):
        build_release(_spec(upstream), home=home, catalog=catalog, progress=tamper)
    assert tampered
    _assert_nothing_left(home, catalog)


def test_invalid_template_is_a_packer_error(upstream: tuple[Path, str], home: Path, catalog: ReleaseCatalog,
                                            tmp_path: Path) -> None:
    broken = tmp_path / "template"
    shutil.copytree(default_template_dir(), broken)
    with (broken / "release.pkr.hcl").open("a") as f:
        f.write('\nbuild {\n  sources = ["source.null.missing"]\n}\n')
    with pytest.raises(PackerError, match=r"(?s)is invalid:.*Unknown source null.missing"):
        build_release(_spec(upstream), home=home, catalog=catalog, template_dir=broken)
    _assert_nothing_left(home, catalog)


def test_missing_packer_names_the_package(upstream: tuple[Path, str], home: Path, catalog: ReleaseCatalog) -> None:
    with pytest.raises(ToolMissing, match=r"Debian package `packer`"):
        build_release(_spec(upstream), home=home, catalog=catalog, packer="edgefleet-no-such-packer")
    _assert_nothing_left(home, catalog)


def _sleeper(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in 'python' for the template that records its pid and hangs, like a stuck remaster."""
    pid_file = tmp_path / "sleeper.pid"
    script = tmp_path / "hang.sh"
    script.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 120\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script, pid_file


def _gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (a killed orphan is a zombie until init reaps it)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_timeout_terminates_the_process_group(upstream: tuple[Path, str], home: Path, catalog: ReleaseCatalog,
                                              tmp_path: Path) -> None:
    script, pid_file = _sleeper(tmp_path)
    t0 = time.monotonic()
    with pytest.raises(PackerError, match=r"timed out after [34] s; its process group was terminated"):
        build_release(_spec(upstream), home=home, catalog=catalog, python=str(script), timeout=4)
    assert time.monotonic() - t0 < 20
    assert _gone(int(pid_file.read_text()))
    _assert_nothing_left(home, catalog)


def test_cancel_stops_the_build(upstream: tuple[Path, str], home: Path, catalog: ReleaseCatalog,
                                tmp_path: Path) -> None:
    script, pid_file = _sleeper(tmp_path)
    cancel = threading.Event()

    def on_line(line: str) -> None:
        if "Running local shell script" in line:
            threading.Timer(0.5, cancel.set).start()

    with pytest.raises(PackerError, match=r"cancelled"):
        build_release(_spec(upstream), home=home, catalog=catalog, python=str(script), cancel=cancel,
                      progress=on_line, timeout=60)
    assert _gone(int(pid_file.read_text()))
    _assert_nothing_left(home, catalog)


def test_cli_build_list_show_promote_revoke(upstream: tuple[Path, str], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from edgefleet.cli.release import app

    home = tmp_path / "home"
    monkeypatch.setenv("EDGEFLEET_HOME", str(home))
    monkeypatch.delenv("EDGEFLEET_STATE_URL", raising=False)
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str, BaseException | None]:
        res = runner.invoke(app, list(args))
        return res.exit_code, res.stdout, res.exception

    iso = tmp_path / "up.iso"
    code, out, _ = run("fake-upstream", "--talos-version", "v1.12.6", "--out", str(iso))
    assert code == 0 and out.split()[0] == upstream[1]
    code, out, exc = run("build", "r1", "--talos-version", "v1.12.6", "--upstream", str(iso),
                         "--upstream-sha256", upstream[1], "--kernel-arg", "talos.platform=nocloud", "--json")
    assert code == 0, exc
    built = json.loads(out)
    assert built["state"] == "built" and built["name"] == "r1"
    code, out, exc = run("build", "r2", "--talos-version", "v1.12.6", "--upstream", str(iso),
                         "--upstream-sha256", upstream[1], "--kernel-arg", "console=ttyS0")
    assert isinstance(exc, ReleaseInputError) and exc.exit_code == 2
    code, out, _ = run("list", "--json")
    assert [r["name"] for r in json.loads(out)] == ["r1"]
    assert run("promote", "r1", "--to", "canary")[0] == 0
    code, out, _ = run("show", "r1", "--json")
    assert json.loads(out)["state"] == "canary" and json.loads(out)["verified"] is True
    code, _, exc = run("promote", "r1", "--to", "built")
    assert isinstance(exc, ReleaseInputError) and exc.exit_code == 2
    assert run("revoke", "r1", "--reason", "bad kernel")[0] == 0
    code, _, exc = run("promote", "r1", "--to", "stable")
    assert isinstance(exc, ReleaseInputError)
    Path(built["artifact_path"]).write_bytes(b"tampered")
    code, _, exc = run("show", "r1")
    assert isinstance(exc, ArtifactError) and exc.exit_code == 1
    code, out, _ = run("vars", "--json")
    assert code == 0 and {v["name"] for v in json.loads(out) if v["required"]} >= {"release_name", "upstream_sha256"}


def test_upstream_that_is_not_talos_fails_inside_packer_and_leaves_nothing(home: Path, catalog: ReleaseCatalog,
                                                                          tmp_path: Path) -> None:
    import io

    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, rock_ridge="1.09", joliet=3)
    iso.add_fp(io.BytesIO(b"hello"), 5, "/README.;1", rr_name="README", joliet_path="/README")
    not_talos = tmp_path / "not-talos.iso"
    iso.write(str(not_talos))
    iso.close()
    with pytest.raises(PackerError, match=r"(?s)failed \(exit 1\).*has no /boot/vmlinuz"):
        build_release(_spec((not_talos, sha256_file(not_talos))), home=home, catalog=catalog)
    _assert_nothing_left(home, catalog)
