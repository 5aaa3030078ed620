"""CLI conventions every command follows: ``--version``, ``-h``, shell completion, help pages without
leaking markup, examples in the main commands' help, ``-r``/``-i`` everywhere, "did you mean"."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator
from importlib.metadata import version
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from edgefleet.cli import app, main

runner = CliRunner()
ENV = {"COLUMNS": "200", "TERMINAL_WIDTH": "200", "NO_COLOR": "1"}

MAIN_COMMANDS = [("rollout", "start"), ("rollback",), ("provision",), ("train", "start"), ("train", "run"),
                 ("train", "status"), ("seed", "build"), ("release", "build"), ("inventory", "validate"),
                 ("report",)]

# What must never reach a help page: typer's type label on a flag, reStructuredText literals and roles,
# rich markup and click's paragraph marker, and a help text that says "required" next to typer's own mark.
LEAKS = ("<bool>", "``", ":class:", ":func:", ":meth:", "[/", "[bold", "[red", "[cyan", "[yellow", "\b",
         "(required) [required]")


def _walk(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _walk(sub, (*path, name))


ROOT = typer.main.get_command(app)
COMMANDS = list(_walk(ROOT))
PATHS = [p for p, _ in COMMANDS]


def _help(path: tuple[str, ...], flag: str = "--help") -> str:
    res = runner.invoke(app, [*path, flag], env=ENV)
    assert res.exit_code == 0, (path, res.output)
    return res.output


def test_the_tree_is_walked() -> None:
    assert len(PATHS) > 40
    assert ("rollout", "start") in PATHS and ("seed", "nocloud-url") in PATHS


def test_version_is_the_package_version() -> None:
    res = runner.invoke(app, ["--version"], env=ENV)
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"edgefleet {version('edgefleet')}"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "edgefleet")
def test_every_command_takes_h_and_its_help_leaks_nothing(path: tuple[str, ...]) -> None:
    page = _help(path)
    assert _help(path, "-h") == page
    assert "Usage:" in page
    assert "-h" in page  # listed beside --help
    for leak in LEAKS:
        assert leak not in page, f"{' '.join(path)}: {leak!r} in its help"


def test_no_help_text_repeats_what_typer_marks() -> None:
    for path, cmd in COMMANDS:
        for param in cmd.params:
            text = (getattr(param, "help", None) or "").lower()
            if param.required:
                assert "required" not in text, (path, param.name, text)
        assert "``" not in (cmd.help or ""), path


def test_show_completion_prints_a_bash_script() -> None:
    res = runner.invoke(app, ["--show-completion", "bash"], env={**ENV, "SHELL": "/bin/bash"})
    assert res.exit_code == 0, res.output
    assert "complete " in res.output and "COMP_WORDS" in res.output
    assert "--install-completion" in _help(())


def _parse(argv: list[str]) -> None:
    """Parse one example as the real command would (options, types, required values), without running it."""
    assert argv[0] == "edgefleet", argv
    cmd, args, name = ROOT, argv[1:], "edgefleet"
    while args and args[0] in getattr(cmd, "commands", {}):
        name, cmd, args = args[0], cmd.commands[args[0]], args[1:]
    assert not hasattr(cmd, "commands"), f"{argv}: no command"
    cmd.make_context(name, args)


@pytest.mark.parametrize("path", MAIN_COMMANDS, ids=" ".join)
def test_main_commands_show_examples_that_parse(path: tuple[str, ...]) -> None:
    assert "Examples:" in _help(path)
    cmd = dict(COMMANDS)[path]
    examples = [line.strip() for line in (cmd.help or "").partition("Examples:")[2].splitlines() if line.strip()]
    assert len(examples) >= 1
    for line in examples:
        argv = shlex.split(line)
        assert tuple(argv[1:1 + len(path)]) == path, line
        _parse(argv)


def test_release_and_inventory_have_their_short_options_everywhere() -> None:
    seen = {"--release": 0, "--inventory": 0}
    for path, cmd in COMMANDS:
        for param in cmd.params:
            opts = set(getattr(param, "opts", ()))
            for long, short in (("--release", "-r"), ("--inventory", "-i")):
                if long in opts:
                    seen[long] += 1
                    assert short in opts, f"{' '.join(path)}: {long} without {short}"
                elif short in opts:
                    raise AssertionError(f"{' '.join(path)}: {short} is not {long}")
    assert seen["--release"] >= 8 and seen["--inventory"] >= 20


@pytest.mark.parametrize(("argv", "hint"), [(["rollot"], "Did you mean 'rollout'"),
                                            (["rollout", "strat"], "Did you mean 'start'"),
                                            (["inventroy", "validate"], "Did you mean 'inventory'")])
def test_an_unknown_command_gets_a_suggestion(argv: list[str], hint: str, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["edgefleet", *argv])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    assert hint in capsys.readouterr().err
