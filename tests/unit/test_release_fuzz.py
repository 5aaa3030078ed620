"""Hypothesis feeds bad release inputs through their entry points:

* ``edgefleet release build`` with malformed Packer variables (name, versions, checksum, kernel
  arguments, extensions, installer image): exit 2, a message naming the variable, no catalog row,
  nothing under the releases directory (and no packer run: an upstream that exists is given);
* ``python -m edgefleet.releases.image remaster --spec`` (what the Packer template runs) with a
  malformed variables document: exit 2 naming the spec, no image written;
* ``python -m edgefleet.releases.image manifest`` on images whose embedded release manifest is
  malformed, and ``packer.parse_manifest`` on malformed manifest post-processor output: a clear
  ArtifactError / PackerError naming the file, never a traceback.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pycdlib
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.errors import PackerError
from edgefleet.releases import image as release_image
from edgefleet.releases.build import K8S_VERSION_RE, RELEASE_NAME_RE
from edgefleet.releases.catalog import ReleaseCatalog
from edgefleet.releases.packer import parse_manifest
from edgefleet.releases.upstream import SHA256_RE, TALOS_VERSION_RE, write_fake_upstream
from edgefleet.state.db import create_state_engine

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                       HealthCheck.function_scoped_fixture])

junk_text = st.one_of(st.text(max_size=40), st.sampled_from(["", " ", "-", "v", "v1", "1.2", "V1.12.6", "v1.12.6 ",
                                                             "a b", "x\n", "ÄÖ", "../x", "$(id)", "%s", "\x00"]))


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("upstream") / "talos.iso"
    return path, write_fake_upstream(path, "v1.12.6")


@contextlib.contextmanager
def _home() -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="edgefleet-fuzz-"))
    try:
        create_state_engine(f"sqlite:///{home / 'edgefleet.db'}").dispose()  # the catalog exists already
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def run_cli(args: list[str], home: Path) -> tuple[int, str]:
    """``edgefleet ARGS`` in process, as the console script runs it; (exit code, stdout + stderr).
    An exception the CLI does not turn into a message propagates: the test fails with it."""
    from edgefleet.cli import main

    out, err = io.StringIO(), io.StringIO()
    env = {"EDGEFLEET_HOME": str(home), "EDGEFLEET_STATE_URL": f"sqlite:///{home / 'edgefleet.db'}",
           "COLUMNS": "400"}
    with mock.patch.object(sys, "argv", ["edgefleet", *args]), mock.patch.dict(os.environ, env), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue() + err.getvalue()


def _written(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if not p.name.startswith("edgefleet.db"))


# --- edgefleet release build ----------------------------------------------------------------------

VALID = {"name": "r2026.11", "talos_version": "v1.12.6", "kubernetes_version": "1.35.0",
         "kernel_args": ["talos.platform=nocloud"], "extensions": [], "installer_image": ""}
BAD = {
    "name": junk_text.filter(lambda s: not RELEASE_NAME_RE.fullmatch(s)),
    "talos_version": junk_text.filter(lambda s: not TALOS_VERSION_RE.fullmatch(s)),
    "kubernetes_version": junk_text.filter(lambda s: not K8S_VERSION_RE.fullmatch(s)),
    "upstream_sha256": junk_text.filter(lambda s: not SHA256_RE.fullmatch(s.strip().lower())),
    "kernel_args": st.one_of(st.lists(junk_text.filter(lambda s: s != "talos.platform=nocloud"), min_size=1,
                                      max_size=3),
                             st.lists(junk_text.filter(lambda s: s == "" or any(c.isspace() for c in s)),
                                      min_size=1, max_size=2).map(lambda a: ["talos.platform=nocloud", *a]),
                             st.just(["talos.platform=nocloud", "talos.platform=nocloud"])),
    "extensions": st.lists(junk_text.filter(lambda s: s == "" or "," in s or any(c.isspace() for c in s)),
                           min_size=1, max_size=2),
    "installer_image": junk_text.filter(lambda s: s.strip() != "" and (
        any(c.isspace() or not c.isprintable() for c in s) or not s[0].isalnum())),
}
# The flag (as the CLI spells it) and the word the error must contain for each field.
NAMES = {"name": "name", "talos_version": "talos_version", "kubernetes_version": "kubernetes_version",
         "upstream_sha256": "upstream_sha256", "kernel_args": "kernel", "extensions": "extension",
         "installer_image": "installer_image"}


@st.composite
def bad_build(draw: st.DrawFn) -> dict[str, Any]:
    fields = draw(st.lists(st.sampled_from(sorted(BAD)), min_size=1, max_size=3, unique=True))
    return {"bad": fields, **{f: draw(BAD[f]) for f in fields}}


def _build_args(values: dict[str, Any], upstream: tuple[Path, str]) -> list[str]:
    v = {**VALID, "upstream_sha256": upstream[1], **values}
    args = ["release", "build", v["name"], "--talos-version", v["talos_version"], "--upstream", str(upstream[0]),
            "--upstream-sha256", v["upstream_sha256"], "--kubernetes-version", v["kubernetes_version"],
            "--installer-image", v["installer_image"]]
    for a in v["kernel_args"]:
        args += [f"--kernel-arg={a}"]
    for e in v["extensions"]:
        args += [f"--extension={e}"]
    return args


@FUZZ
@given(case=bad_build())
def test_bad_packer_variables_exit_2_and_write_nothing(case: dict[str, Any], upstream: tuple[Path, str]) -> None:
    if "\x00" in json.dumps(case):  # no process can receive a NUL in its arguments
        case = json.loads(json.dumps(case).replace("\\u0000", "0"))
    with _home() as home:
        code, text = run_cli(_build_args({k: v for k, v in case.items() if k != "bad"}, upstream), home)
        assert code == 2, (case, text)
        assert any(NAMES[f] in text for f in case["bad"]), (case, text)
        assert "Traceback" not in text
        engine = create_state_engine(f"sqlite:///{home / 'edgefleet.db'}")
        try:
            assert ReleaseCatalog(engine).list() == []
        finally:
            engine.dispose()
        assert _written(home) == []


def test_the_valid_base_of_the_fuzzer_passes_the_checks(upstream: tuple[Path, str]) -> None:
    """The fuzzer's base case is valid: what fails above fails for the field it broke. (Checked up to
    packer itself, which is replaced by a missing binary.)"""
    with _home() as home, mock.patch.dict(os.environ, {"PATH": str(home)}):
        code, text = run_cli(_build_args({}, upstream), home)
    assert code == 1 and "packer" in text and "not installed" in text, text


# --- python -m edgefleet.releases.image remaster --spec (the template's variables) --------------

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), junk_text)
json_value = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                             st.dictionaries(junk_text, inner, max_size=3)),
                          max_leaves=8)
SPEC_KEYS = ["release_name", "talos_version", "kubernetes_version", "upstream_iso", "upstream_sha256", "kernel_args",
             "extensions", "installer_image", "cache_dir", "source_date_epoch"]


@st.composite
def bad_spec(draw: st.DrawFn) -> Any:
    """A variables document missing a key, or with a key of the wrong shape; or not an object."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_value.filter(lambda v: not isinstance(v, dict)))
    spec: dict[str, Any] = {"release_name": "r1", "talos_version": "v1.12.6", "kubernetes_version": "1.35.0",
                            "upstream_iso": "UPSTREAM", "upstream_sha256": "SHA",
                            "kernel_args": ["talos.platform=nocloud"], "extensions": [],
                            "installer_image": "ghcr.io/siderolabs/installer:v1.12.6"}
    broken = draw(st.sampled_from(["release_name", "talos_version", "kubernetes_version", "kernel_args", "extensions",
                                   "installer_image", "source_date_epoch"]))
    if draw(st.booleans()) and broken in spec:
        del spec[broken]
    elif broken in ("kernel_args", "extensions"):
        spec[broken] = draw(st.one_of(json_leaf.filter(lambda v: not isinstance(v, str)),
                                      st.dictionaries(junk_text, json_leaf, min_size=1, max_size=2)))
    elif broken == "source_date_epoch":
        spec[broken] = draw(st.one_of(junk_text, st.floats(allow_nan=True).filter(lambda f: not 0 <= f < 2**32),
                                      st.integers(-(2**70), -1), st.integers(2**32, 2**70), st.lists(json_leaf)))
    else:
        spec[broken] = draw(st.one_of(st.none(), st.integers(), st.lists(json_leaf, max_size=2), st.dictionaries(
            junk_text, json_leaf, max_size=2)))
    spec.update(draw(st.dictionaries(st.sampled_from(["cache_dir", "extra", "note"]), json_value, max_size=1)))
    return spec


@FUZZ
@given(spec=bad_spec())
def test_bad_remaster_specs_exit_2_and_write_nothing(spec: Any, upstream: tuple[Path, str]) -> None:
    text = json.dumps(spec).replace('"UPSTREAM"', json.dumps(str(upstream[0]))).replace('"SHA"',
                                                                                          json.dumps(upstream[1]))
    with _home() as home:
        out = home / "out" / "r1.iso"
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = release_image.main(["remaster", "--spec", text, "--out", str(out)])
        assert code == 2, (spec, err.getvalue())
        assert "remaster spec" in err.getvalue() or "kernel argument" in err.getvalue(), err.getvalue()
        assert not out.parent.exists() or not any(out.parent.iterdir())
        assert list(home.rglob("*.iso")) == []


# --- embedded release manifests and packer's manifest post-processor output ----------------------

def _iso_with_manifest(body: bytes) -> bytes:
    image = pycdlib.PyCdlib()
    image.new(interchange_level=3, rock_ridge="1.09")
    image.add_directory(iso_path="/EDGEFLEET", rr_name="edgefleet")
    image.add_fp(io.BytesIO(body), len(body), iso_path="/EDGEFLEET/RELEASE.JSON;1", rr_name="release.json")
    buf = io.BytesIO()
    image.write_fp(buf)
    image.close()
    return buf.getvalue()


manifest_doc = st.one_of(
    json_value,
    st.fixed_dictionaries({}, optional={k: json_value for k in ("release", "talos_version", "kubernetes_version",
                                                                "installer_image", "extensions", "kernel_args",
                                                                "upstream_sha256")}))


@FUZZ
@given(doc=manifest_doc, raw=st.one_of(st.none(), st.binary(max_size=64)))
def test_malformed_release_manifests_are_a_clear_error(doc: Any, raw: bytes | None) -> None:
    body = raw if raw is not None else json.dumps(doc).encode()
    with _home() as home:
        iso = home / "r1.iso"
        iso.write_bytes(_iso_with_manifest(body))
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = release_image.main(["manifest", str(iso)])
    if code == 0:  # a well-formed manifest after all: it reads back as one
        shown = json.loads(out.getvalue())
        assert set(shown) == {"release", "talos_version", "kubernetes_version", "installer_image", "extensions",
                              "kernel_args", "upstream_sha256"}
    else:
        assert code == 1, err.getvalue()
        assert f"release image {iso}: /edgefleet/release.json is not a valid release manifest" in err.getvalue()


packer_build = st.fixed_dictionaries({}, optional={"name": json_value, "builder_type": json_value,
                                                   "files": json_value, "packer_run_uuid": json_value,
                                                   "custom_data": json_value})


@FUZZ
@given(doc=st.one_of(json_value, st.fixed_dictionaries(
    {}, optional={"builds": st.one_of(json_value, st.lists(st.one_of(packer_build, json_leaf), max_size=3)),
                  "last_run_uuid": st.one_of(json_leaf, st.just("u1"))})),
       raw=st.one_of(st.none(), st.text(max_size=30)))
def test_malformed_packer_manifests_are_a_packer_error(doc: Any, raw: str | None) -> None:
    with _home() as home:
        path = home / "packer-manifest.json"
        path.write_text(raw if raw is not None else json.dumps(doc))
        try:
            build = parse_manifest(path)
        except PackerError as e:
            assert f"packer manifest {path}" in str(e)
        else:
            assert all(isinstance(n, str) and isinstance(s, int) for n, s in build.files)
