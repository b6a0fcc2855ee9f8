"""``fleetd --help`` and every command's: metavars an operator reads (``PATH...``, ``--http HOST:PORT``), never
a Python type (``<list[Path]>``, ``<str>``); each command listed by the whole first sentence of its docstring,
never cut at the terminal's width; ``fleetd --version``; and duration flags that name themselves."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from fleetd import __version__
from fleetd.cli.app import app
from fleetd.cli.help_format import summary
from tests.cli.support import fleetd_env, run_fleetd

PYTHON_TYPES = re.compile(r"<(list\[|str>|int>|float>|path>|Path>|bool>)")


def groups_and_commands() -> Iterator[tuple[tuple[str, ...], object]]:
    """Every group (with the commands it lists) and every command of the app, as the words typed."""

    def walk(command: object, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], object]]:
        yield path, command
        for name, sub in (getattr(command, "commands", None) or {}).items():
            yield from walk(sub, (*path, name))

    yield from walk(typer.main.get_command(app), ())


ALL = list(groups_and_commands())


def help_of(path: tuple[str, ...]) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"}, prog_name="fleetd")
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(("path", "command"), ALL, ids=[" ".join(p) or "fleetd" for p, _ in ALL])
def test_help_shows_no_python_types_and_no_cut_summaries(path: tuple[str, ...], command: object) -> None:
    text = help_of(path)
    assert not PYTHON_TYPES.search(text), text
    subcommands: dict[str, object] = getattr(command, "commands", None) or {}
    if not subcommands:
        return
    listing = " ".join(text.split("Commands:", 1)[1].split())
    for name, sub in subcommands.items():
        shown = summary(getattr(sub, "help", None) or "")
        assert f"{name} {shown}" in listing, f"{name}: {shown!r} not shown whole in:\n{text}"
        assert shown.endswith("."), f"the summary of {name} is not a sentence: {shown!r}"


def test_arguments_are_listed_by_metavar() -> None:
    text = help_of(("plan",))
    assert "Usage: fleetd plan [OPTIONS] [PATH]..." in text
    assert "\n  PATH...  Manifest files or directories" in text
    assert "--database-url URL" in text
    assert "--observed FILE" in text
    serve = help_of(("serve",))
    assert "--http HOST:PORT" in serve
    assert "--interval DURATION" in serve


def test_version_flag_prints_the_version(tmp_path: Path) -> None:
    for args in (["--version"], ["version"]):
        result = run_fleetd(args, env=fleetd_env(tmp_path))
        assert (result.returncode, result.stdout, result.stderr) == (0, f"fleetd {__version__}\n", "")


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        (("serve",), "--interval"),
        (("serve",), "--unhealthy-after"),
        (("serve",), "--lost-after"),
        (("apply",), "--lock-timeout"),
        (("node", "token", "create"), "--ttl"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else v,
)
def test_a_duration_flag_that_is_not_one_is_named_in_one_line(
    tmp_path: Path, command: tuple[str, ...], flag: str
) -> None:
    result = run_fleetd([*command, flag, "abc"], env=fleetd_env(tmp_path))
    assert result.returncode == 1
    assert result.stderr == (
        f"error: {flag}: 'abc' is not a duration; use a number with a unit (ms, s, m, h, d), "
        "e.g. '500ms', '30s', '1h30m'\n"
    )


def test_a_too_short_interval_is_named(tmp_path: Path) -> None:
    result = run_fleetd(["serve", "--interval", "0s"], env=fleetd_env(tmp_path))
    assert (result.returncode, result.stderr) == (1, "error: --interval: '0s' is too short; give at least 1ms\n")
