"""Pure parts of a release build: machine-readable lines, manifests, template variables, the spec,
and the lifecycle table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgefleet.errors import PackerError, ReleaseInputError
from edgefleet.releases.build import ReleaseSpec, check_spec, default_template_dir, packer_variables
from edgefleet.releases.catalog import TRANSITIONS, ReleaseState, check_transition
from edgefleet.releases.packer import parse_machine_line, parse_manifest
from edgefleet.releases.template import check_values, load_template_variables

SHA = "0123456789abcdef" * 4


def test_parse_machine_line_unescapes_commas_and_newlines() -> None:
    ev = parse_machine_line("1795650203,,ui,say,==> a%!(PACKER_COMMA) b\\nc\n")
    assert ev is not None
    assert (ev.timestamp, ev.target, ev.type, ev.text) == (1795650203, "", "ui", "==> a, b\nc")
    art = parse_machine_line("17,null.release,artifact,1,file,0,/x/r%!(PACKER_COMMA)1.iso")
    assert art is not None and art.data == ("1", "file", "0", "/x/r,1.iso")
    err = parse_machine_line("17,,ui,error,Build failed")
    assert err is not None and err.is_error
    assert parse_machine_line("plain text from a plugin") is None
    assert parse_machine_line("") is None


def test_parse_manifest_picks_last_run(tmp_path: Path) -> None:
    doc = {"builds": [
        {"name": "release", "builder_type": "null", "files": [{"name": "old.iso", "size": 1}],
         "packer_run_uuid": "u1", "custom_data": {}},
        {"name": "release", "builder_type": "null", "files": [{"name": "r1.iso", "size": 5}],
         "packer_run_uuid": "u2", "custom_data": {"release": "r1"}}], "last_run_uuid": "u2"}
    (tmp_path / "m.json").write_text(json.dumps(doc))
    b = parse_manifest(tmp_path / "m.json")
    assert b.files == (("r1.iso", 5),) and b.custom_data == {"release": "r1"}
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(PackerError, match=r"malformed"):
        parse_manifest(tmp_path / "bad.json")
    with pytest.raises(PackerError, match=r"no manifest"):
        parse_manifest(tmp_path / "none.json")


def test_template_variables_are_read_from_the_real_template() -> None:
    v = load_template_variables(default_template_dir())
    required = {n for n, x in v.items() if x.required}
    assert required == {"release_name", "talos_version", "upstream_iso", "upstream_sha256", "installer_image",
                        "output_dir"}
    assert v["kernel_args"].type == "list(string)"
    assert v["kernel_args"].default == ["talos.platform=nocloud"]
    assert any("talos.platform=nocloud" in r.condition for r in v["kernel_args"].validations)
    assert v["source_date_epoch"].type == "number"
    assert all(x.description for x in v.values())


def _spec(**over: object) -> ReleaseSpec:
    base: dict[str, object] = dict(name="r1", talos_version="v1.12.6", upstream_iso="up.iso", upstream_sha256=SHA,
                                   kernel_args=("talos.platform=nocloud",))
    base.update(over)
    return ReleaseSpec(**base)  # type: ignore[arg-type]


def test_check_spec_fills_vanilla_installer_and_lists_all_problems() -> None:
    assert check_spec(_spec()).installer_image == "ghcr.io/siderolabs/installer:v1.12.6"
    with pytest.raises(ReleaseInputError) as e:
        check_spec(_spec(name="Bad Name", talos_version="1.12", upstream_sha256="abc",
                         kernel_args=("console=ttyS0", "a b")))
    msg = str(e.value)
    for needle in ("name 'Bad Name'", "talos_version", "upstream_sha256", "talos.platform=nocloud", "whitespace"):
        assert needle in msg
    with pytest.raises(ReleaseInputError, match=r"--installer-image"):
        check_spec(_spec(extensions=("siderolabs/iscsi-tools",)))


def test_packer_variables_satisfy_the_template_types(tmp_path: Path) -> None:
    variables = load_template_variables(default_template_dir())
    values = packer_variables(check_spec(_spec()), upstream_iso="up.iso", output_dir=tmp_path, cache_dir=tmp_path,
                              python="python3")
    check_values(variables, values)
    bad = dict(values, kernel_args="talos.platform=nocloud", bogus=1)
    del bad["release_name"]
    with pytest.raises(ReleaseInputError) as e:
        check_values(variables, bad)
    msg = str(e.value)
    assert "bogus: not a variable" in msg and "release_name: required" in msg and "kernel_args: expected" in msg


def test_lifecycle_only_moves_forward_and_revoked_is_final() -> None:
    order = [ReleaseState.built, ReleaseState.canary, ReleaseState.stable]
    for i, a in enumerate(order):
        for b in order[:i + 1]:
            with pytest.raises(ReleaseInputError):
                check_transition("r1", a, b)
        check_transition("r1", a, ReleaseState.revoked)
    assert TRANSITIONS[ReleaseState.revoked] == frozenset()
    for s in ReleaseState:
        with pytest.raises(ReleaseInputError, match=r"revoked is final"):
            check_transition("r1", ReleaseState.revoked, s)
    with pytest.raises(ReleaseInputError):
        check_transition("r1", ReleaseState.built, ReleaseState.stable)  # canary first


@pytest.mark.parametrize(("condition", "values", "expected"), [
    ('length(var.x) == 3 && lower(var.x) == var.x', {"x": "abc"}, True),
    ('length(var.x) == 3 && lower(var.x) == var.x', {"x": "aBc"}, False),
    ('substr(var.v, 0, 1) == "v" || var.n > 2', {"v": "1.2", "n": 3}, True),
    ('!contains(var.l, "a=\\"b\\"")', {"l": ['a="b"']}, False),
    ("(var.n >= 1) && (var.n <= 2)", {"n": 2.0}, True),
    ('can(regex("^v", var.v))', {"v": "v1"}, None),  # outside the subset: packer decides
    ("var.missing == 1", {}, None),
])
def test_evaluate_condition(condition: str, values: dict[str, object], expected: bool | None) -> None:
    from edgefleet.releases.template import evaluate_condition

    assert evaluate_condition(condition, values) is expected
