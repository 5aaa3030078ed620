"""The ``edgefleet`` command line: one sub-app per area (inventory, release, seed, rollout, train,
schedule, talos, report, sim, db); this module wires them and maps ``EdgefleetError`` to a message and
exit code (0 ok, 1 operation failed, 2 bad input). Commands that do not run a flow never import prefect."""

from __future__ import annotations

import errno
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer
from rich.markup import escape

from edgefleet.cli import db as _db
from edgefleet.cli import inventory as _inventory
from edgefleet.cli import node as _node
from edgefleet.cli import release as _release
from edgefleet.cli import report as _report
from edgefleet.cli import rollout as _rollout
from edgefleet.cli import schedule as _schedule
from edgefleet.cli import seed as _seed
from edgefleet.cli import serve as _serve
from edgefleet.cli import sim as _sim
from edgefleet.cli import talos as _talos
from edgefleet.cli import train as _train
from edgefleet.cli._common import App, console, err_console
from edgefleet.errors import EdgefleetError
from edgefleet.logs import LogFormat, configure_logging

# errno values that say "this path cannot be used as given": bad input, exit 2.
_PATH_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
                          errno.ENOENT, errno.ENAMETOOLONG, errno.ELOOP, errno.ENXIO})

app = App(add_completion=True, help="edgefleet: run fleets of edge Talos Kubernetes clusters.")


def _print_version(wanted: bool) -> None:
    if not wanted:
        return
    try:
        console.print(f"edgefleet {version('edgefleet')}", markup=False)
    except PackageNotFoundError:  # run from a source tree that was never installed
        raise EdgefleetError("edgefleet is not installed (no package metadata): `pip install -e .` "
                             "in its source tree") from None
    raise typer.Exit()



app.add_typer(_inventory.app, name="inventory")
app.add_typer(_release.app, name="release")
app.add_typer(_seed.app, name="seed")
app.add_typer(_sim.app, name="sim")
app.add_typer(_schedule.app, name="schedule")
app.add_typer(_rollout.app, name="rollout")
app.add_typer(_train.app, name="train")
app.add_typer(_db.app, name="db")
app.add_typer(_node.app, name="node")
app.command("rollback")(_rollout.rollback_cmd)
app.command("provision")(_rollout.provision_cmd)
app.command("report")(_report.report_cmd)
app.command("talosconfig")(_talos.talosconfig_cmd)
app.command("kubeconfig")(_talos.kubeconfig_cmd)
app.command("serve")(_serve.serve_cmd)

LogFormatOpt = Annotated[LogFormat, typer.Option(
    "--log-format", envvar="EDGEFLEET_LOG_FORMAT", case_sensitive=False,
    help="Log records on stderr as plain text or as JSON, one object per line (json: at level INFO)")]


@app.callback()
def _root(log_format: LogFormatOpt = LogFormat.text,
          _version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                                 help="Print edgefleet's version and exit")] = False) -> None:
    """edgefleet: run fleets of edge Talos Kubernetes clusters."""
    if log_format is LogFormat.json:
        configure_logging(LogFormat.json)


def main() -> None:
    try:
        app(standalone_mode=False)
    except EdgefleetError as e:
        # escaped: messages carry brackets of their own ("[nodes.1.talos_patches]") that rich would eat
        err_console.print(f"[red]error:[/red] {escape(str(e))}", markup=True, soft_wrap=True)
        sys.exit(e.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except SystemExit:
        raise
    except OSError as e:
        # A file system refusal no check foresaw (a file where a directory was expected inside an
        # output tree, a race): one line naming the path. A path the user gave is bad input (2);
        # anything else (a full disk, an I/O error) is an operation that failed (1).
        where = f"{e.filename}: " if e.filename else ""
        err_console.print(f"error: {where}{e.strerror or e}", markup=False, soft_wrap=True)
        sys.exit(2 if e.errno in _PATH_ERRNOS else 1)
    except Exception as e:
        # Usage errors (click's ClickException, which typer may vendor) arrive here in
        # non-standalone mode: they know how to show themselves and carry exit code 2.
        show, code = getattr(e, "show", None), getattr(e, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            sys.exit(code)
        raise


if __name__ == "__main__":
    main()
