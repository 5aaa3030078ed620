"""``edgefleet release``: build, list, show, promote and revoke releases; inspect the Packer template's
variables; write a Talos-like upstream ISO for tests and demos. No prefect import here: a build from
the CLI runs the library directly (the Prefect flow ``build_release`` wraps the same function)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from edgefleet.cli._common import App, JsonOpt, console, default_state_url, edgefleet_home, err_console, print_json

if TYPE_CHECKING:
    from edgefleet.releases.catalog import ReleaseCatalog

app = App(help="Build releases with Packer and manage the release catalog.")

TemplateOpt = Annotated[Path | None, typer.Option("--template", help="Packer template directory "
                                                                     "(default: packer/release)")]


def _catalog() -> ReleaseCatalog:
    from edgefleet.releases.catalog import ReleaseCatalog
    from edgefleet.state.db import open_state

    return ReleaseCatalog(open_state(default_state_url()))


@app.command()
def build(name: Annotated[str, typer.Argument(help="Release name (unique)")],
          talos_version: Annotated[str, typer.Option("--talos-version", help="e.g. v1.12.6")],
          upstream: Annotated[str, typer.Option("--upstream", help="Upstream Talos ISO: path or http(s) URL")],
          upstream_sha256: Annotated[str, typer.Option("--upstream-sha256", help="Its sha256")],
          kernel_arg: Annotated[list[str] | None, typer.Option(
              "--kernel-arg", help="Extra kernel argument (repeat); talos.platform=nocloud is required")] = None,
          extension: Annotated[list[str] | None, typer.Option("--extension", help="System extension (repeat)")] = None,
          installer_image: Annotated[str, typer.Option("--installer-image", help="Installer image reference "
                                                       "(default: the vanilla installer)")] = "",
          kubernetes_version: Annotated[str, typer.Option("--kubernetes-version")] = "1.35.0",
          template: TemplateOpt = None,
          timeout: Annotated[float, typer.Option("--timeout", min=1, help="Seconds for the whole build")] = 600,
          json_out: JsonOpt = False) -> None:
    """Build a release image with Packer, verify it, and record it in the catalog (state: built).

    Examples:

      edgefleet release build v2 --talos-version v1.12.6 --upstream metal-amd64.iso --upstream-sha256 HEX
      edgefleet release build v2 --talos-version v1.12.6 --upstream https://HOST/metal.iso --upstream-sha256 HEX"""
    from edgefleet.releases.build import ReleaseSpec, build_release

    args = tuple(kernel_arg) if kernel_arg else ("talos.platform=nocloud",)
    spec = ReleaseSpec(name=name, talos_version=talos_version, upstream_iso=upstream,
                       upstream_sha256=upstream_sha256, installer_image=installer_image,
                       kubernetes_version=kubernetes_version, kernel_args=args, extensions=tuple(extension or ()))
    release = build_release(spec, home=edgefleet_home(), catalog=_catalog(), template_dir=template,
                            timeout=timeout, progress=lambda m: err_console.print(m, markup=False, highlight=False))
    if json_out:
        print_json(release.to_json())
    else:
        console.print(f"[green]built[/green] {release.name}: {release.artifact_path} sha256 {release.sha256} "
                      f"({release.size} bytes, {release.build_seconds:.1f} s)")


@app.command("list")
def list_(state: Annotated[str | None, typer.Option("--state", help="built, canary, stable or revoked")] = None,
          json_out: JsonOpt = False) -> None:
    """Releases in the catalog, oldest first."""
    from edgefleet.errors import ReleaseInputError
    from edgefleet.releases.catalog import ReleaseState

    try:
        wanted = ReleaseState(state) if state else None
    except ValueError as e:
        raise ReleaseInputError(f"--state {state!r}: use one of {', '.join(ReleaseState)}") from e
    releases = _catalog().list(wanted)
    if json_out:
        print_json([r.to_json() for r in releases])
        return
    t = Table("release", "state", "talos", "kubernetes", "size", "sha256", "created")
    for r in releases:
        t.add_row(r.name, r.state.value, r.talos_version, r.kubernetes_version, f"{r.size / 1e6:.1f} MB",
                  r.sha256[:12], f"{r.created_at:%Y-%m-%d %H:%M}Z")
    console.print(t)


@app.command()
def show(name: Annotated[str, typer.Argument(help="Release name")],
         verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Re-hash the artifact")] = True,
         json_out: JsonOpt = False) -> None:
    """One release; by default re-hashes its artifact (exit 1 if it was altered)."""
    from edgefleet.releases.catalog import verify_artifact

    release = _catalog().get(name)
    if verify:
        verify_artifact(release)
    if json_out:
        data = release.to_json()
        data["verified"] = verify
        print_json(data)
        return
    for key, value in release.to_json().items():
        shown = " ".join(value) if isinstance(value, list) else value
        console.print(f"[bold]{key:18}[/bold] {shown}", highlight=False)
    if verify:
        console.print("[green]artifact verified[/green] (sha256 matches)")


@app.command()
def promote(name: Annotated[str, typer.Argument(help="Release name")],
            to: Annotated[str, typer.Option("--to", help="canary or stable")],
            note: Annotated[str, typer.Option("--note")] = "") -> None:
    """Move a release forward: built -> canary -> stable (verifies the artifact first)."""
    from edgefleet.errors import ReleaseInputError
    from edgefleet.releases.catalog import ReleaseState, verify_artifact

    try:
        target = ReleaseState(to)
    except ValueError as e:
        raise ReleaseInputError(f"--to {to!r}: use canary or stable") from e
    catalog = _catalog()
    verify_artifact(catalog.get(name))
    release = catalog.promote(name, target, now=datetime.now(UTC), note=note)
    console.print(f"{release.name} is now [bold]{release.state.value}[/bold]")


@app.command()
def revoke(name: Annotated[str, typer.Argument(help="Release name")],
           reason: Annotated[str, typer.Option("--reason", help="Why (recorded)")]) -> None:
    """Revoke a release for good: it can never be rolled out again."""
    release = _catalog().revoke(name, now=datetime.now(UTC), reason=reason)
    console.print(f"{release.name} is now [red]revoked[/red]: {release.note}")


@app.command("vars")
def vars_(template: TemplateOpt = None, json_out: JsonOpt = False) -> None:
    """The Packer template's variables: type, required or default, validation rules."""
    from edgefleet.releases.build import default_template_dir
    from edgefleet.releases.template import load_template_variables

    variables = load_template_variables(template or default_template_dir())
    if json_out:
        print_json([{"name": v.name, "type": v.type, "required": v.required, "default": v.default,
                     "description": v.description, "rules": [r.error_message for r in v.validations]}
                    for v in variables.values()])
        return
    t = Table("variable", "type", "required / default", "rules", "description")
    for v in variables.values():
        t.add_row(v.name, v.type, "required" if v.required else repr(v.default),
                  "\n".join(r.error_message for r in v.validations), v.description)
    console.print(t)


@app.command("fake-upstream")
def fake_upstream(talos_version: Annotated[str, typer.Option("--talos-version")] = "v1.12.6",
                  out: Annotated[Path, typer.Option("--out", help="ISO file to write")] = Path("talos-upstream.iso"),
                  ) -> None:
    """Write a small Talos-like upstream ISO (placeholder kernel) and print its sha256."""
    from edgefleet.outpaths import check_output_file
    from edgefleet.releases.upstream import write_fake_upstream

    check_output_file(out, "--out", create_parents=True)
    sha = write_fake_upstream(out, talos_version)
    typer.echo(f"{sha}  {out}")
