"""The ``edgefleet`` command line: one sub-app per area (inventory, release, seed, rollout, train,
schedule, talos, report, sim, db); this module wires them and maps ``EdgefleetError`` to a message and
exit code (0 ok, 1 operation failed, 2 bad input). Commands that do not run a flow never import prefect."""

from __future__ import annotations

import errno
import sys

import typer
from rich.markup import escape

from edgefleet.cli import db as _db
from edgefleet.cli import inventory as _inventory
from edgefleet.cli import release as _release
from edgefleet.cli import report as _report
from edgefleet.cli import rollout as _rollout
from edgefleet.cli import schedule as _schedule
from edgefleet.cli import seed as _seed
from edgefleet.cli import sim as _sim
from edgefleet.cli import talos as _talos
from edgefleet.cli import train as _train
from edgefleet.cli._common import err_console
from edgefleet.errors import EdgefleetError

# errno values that say "this path cannot be used as given": bad input, exit 2.
_PATH_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
                          errno.ENOENT, errno.ENAMETOOLONG, errno.ELOOP, errno.ENXIO})

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="edgefleet: run fleets of edge Talos Kubernetes clusters.")
app.add_typer(_inventory.app, name="inventory")
app.add_typer(_release.app, name="release")
app.add_typer(_seed.app, name="seed")
app.add_typer(_sim.app, name="sim")
app.add_typer(_schedule.app, name="schedule")
app.add_typer(_rollout.app, name="rollout")
app.add_typer(_train.app, name="train")
app.add_typer(_db.app, name="db")
app.command("rollback")(_rollout.rollback_cmd)
app.command("provision")(_rollout.provision_cmd)
app.command("report")(_report.report_cmd)
app.command("talosconfig")(_talos.talosconfig_cmd)
app.command("kubeconfig")(_talos.kubeconfig_cmd)


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
