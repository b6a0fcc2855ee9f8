"""The typer application: ``fleetd validate``, ``schema``, ``inspect``, ``plan``, ``db`` and ``version``.

Exit codes follow architecture.md §5: 0 valid / nothing to do, 1 error or invalid, 2 changes pending
(plan). Usage errors exit 1 too, so that CI never mistakes a typo in a flag for "changes pending".
"""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import Annotated

import typer

from fleetd.cli.agent_command import agent_command
from fleetd.cli.apply_command import apply_command
from fleetd.cli.common import (
    EXIT_ERROR,
    EXIT_OK,
    fail,
    os_error_line,
    print_invalid,
    redact_url,
    registry_errors,
    registry_failure,
    validity_summary,
)
from fleetd.cli.help_format import FleetdTyper
from fleetd.cli.logs_command import logs_command
from fleetd.cli.node_command import node_app
from fleetd.cli.options import DatabaseUrl, PathsArg
from fleetd.cli.plan_command import plan_command
from fleetd.cli.replica_command import replica_app
from fleetd.cli.serve_command import serve
from fleetd.cli.status_command import status_command

app = FleetdTyper(
    name="fleetd",
    help="Keep a fleet of self-hosted LLM inference servers in the state that fleet.yaml declares.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(requested: bool) -> None:
    if requested:
        version()
        raise typer.Exit(EXIT_OK)


@app.callback()
def _options(
    _version: Annotated[
        bool,
        typer.Option("--version", help="Print fleetd's version and exit.", is_eager=True, callback=_print_version),
    ] = False,
) -> None:
    """Options before the command (``fleetd --version``); the help text is the app's."""


class ValidateFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"
    GITHUB = "github"


class InspectFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"
    YAML = "yaml"


@app.command()
def validate(
    paths: PathsArg = None,
    output_format: Annotated[ValidateFormat, typer.Option("--format", "-f", help="Output format.")] = (
        ValidateFormat.TEXT
    ),
    strict: Annotated[bool, typer.Option("--strict", help="Treat warnings as errors.")] = False,
) -> None:
    """Check a manifest: YAML, schema and semantics. Exit 0 when valid (warnings allowed), 1 when not."""
    from fleetd.cli.diagnostics_output import render_github, render_json, render_text
    from fleetd.manifest.loading import load_manifest

    loaded = load_manifest(paths or [Path("fleet.yaml")])
    valid = loaded.valid and not (strict and loaded.warnings)
    summary = validity_summary(
        loaded.paths or [str(p) for p in paths or [Path("fleet.yaml")]],
        len(loaded.errors),
        len(loaded.warnings),
        valid,
    )
    if output_format is ValidateFormat.JSON:
        out = render_json(loaded.diagnostics, valid)
    elif output_format is ValidateFormat.GITHUB:
        out = render_github(loaded.diagnostics, summary)
    else:
        out = render_text(loaded.diagnostics, {f.name: f.text for f in loaded.files}, summary)
    sys.stdout.write(out)
    raise typer.Exit(EXIT_OK if valid else EXIT_ERROR)


@app.command()
def schema(
    check: Annotated[
        Path | None,
        typer.Option(
            "--check",
            metavar="FILE",
            help="Compare with this copy of the schema instead of printing; exit 1 when it differs.",
            show_default=False,
            readable=False,  # the command names a file it cannot read
        ),
    ] = None,
) -> None:
    """Print the manifest's JSON Schema, or check a committed copy of it.

    The copy is committed at schemas/fleet.schema.json."""
    from fleetd.manifest.schema import SchemaFileState, check_schema_file, schema_text

    if check is None:
        sys.stdout.write(schema_text())
        return
    found = check_schema_file(check)
    if found.state is SchemaFileState.UP_TO_DATE:
        sys.stdout.write(f"{check} is up to date\n")
        return
    fail(
        {
            SchemaFileState.OUT_OF_DATE: f"{check} is out of date; regenerate it with: fleetd schema > {check}",
            SchemaFileState.MISSING: f"{check} does not exist; create it with: fleetd schema > {check}",
            SchemaFileState.MANIFEST: (
                f"{check} looks like a manifest, not a copy of the schema: --check compares the committed "
                "schema (e.g. schemas/fleet.schema.json); `fleetd validate` checks a manifest"
            ),
            SchemaFileState.UNREADABLE: f"cannot read {check}: {found.reason}",
        }[found.state]
    )


@app.command()
def inspect(
    paths: PathsArg = None,
    output_format: Annotated[InspectFormat, typer.Option("--format", "-f", help="Output format.")] = (
        InspectFormat.TEXT
    ),
) -> None:
    """Show the desired state a valid manifest resolves to: defaults merged, units resolved, secrets redacted."""
    from fleetd.cli.desired_output import render_desired_json, render_desired_text, render_desired_yaml
    from fleetd.manifest.loading import load_manifest

    loaded = load_manifest(paths or [Path("fleet.yaml")])
    if loaded.desired is None:
        print_invalid(loaded, paths or [Path("fleet.yaml")])
        raise typer.Exit(EXIT_ERROR)
    if output_format is InspectFormat.JSON:
        sys.stdout.write(render_desired_json(loaded.desired, loaded.paths))
    elif output_format is InspectFormat.YAML:
        sys.stdout.write(render_desired_yaml(loaded.desired, loaded.paths))
    else:
        sys.stdout.write(render_desired_text(loaded.desired, loaded.paths))


db_app = FleetdTyper(help="The registry database.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(database_url: DatabaseUrl = None) -> None:
    """Migrate the registry schema to the newest revision (fleetd also does this on start)."""
    from fleetd.registry.engine import default_database_url
    from fleetd.registry.migrating import upgrade_registry

    where = database_url or default_database_url()
    with registry_errors(where):
        before, after = upgrade_registry(database_url)
    if before == after:
        sys.stdout.write(f"registry at {redact_url(where)} is up to date (revision {after})\n")
    else:
        sys.stdout.write(f"registry at {redact_url(where)} upgraded from {before or 'empty'} to {after}\n")


@db_app.command("current")
def db_current(database_url: DatabaseUrl = None) -> None:
    """Print the registry's schema revision and the newest one this fleetd ships."""
    from fleetd.registry.engine import Access, default_database_url, registry_access
    from fleetd.registry.migrating import head_revision, stored_revision

    with registry_errors(database_url):
        missing = registry_access(database_url) is Access.MISSING
        current = stored_revision(database_url)
    if missing:
        where = redact_url(database_url or default_database_url())
        sys.stderr.write(f"note: no registry at {where} yet; `fleetd db upgrade` or the first apply creates it\n")
    head = head_revision()
    sys.stdout.write(f"current {current or 'empty'}, head {head}\n")
    raise typer.Exit(EXIT_OK if current == head else EXIT_ERROR)


app.command("plan")(plan_command)
app.command("apply")(apply_command)
app.command("status")(status_command)
app.command("serve")(serve)
app.command("agent")(agent_command)
app.command("logs")(logs_command)
app.add_typer(replica_app, name="replica")
app.add_typer(node_app, name="node")


@app.command()
def version() -> None:
    """Print fleetd's version."""
    from fleetd import __version__

    sys.stdout.write(f"fleetd {__version__}\n")


def main() -> None:
    """Console-script entry point.

    Runs typer outside its standalone mode so that usage errors (exit 2 in click) become exit 1: exit 2 means
    "changes pending" to CI. Click's exceptions are matched by shape because typer may vendor its own click.
    """
    try:
        if sys.argv[1:] in (["version"], ["--version"]):
            # Nothing to parse. On the way to a command typer builds a pydantic TypeAdapter for the unset --help
            # flag, importing pydantic: more than half of this command's start-up (bench/startup.py).
            version()
            code = EXIT_OK
        else:
            code = app(standalone_mode=False)
    except typer.Abort:
        sys.stderr.write("Aborted.\n")
        sys.exit(EXIT_ERROR)
    except BrokenPipeError:
        sys.exit(EXIT_OK)
    except OSError as exc:  # what no command caught: a state dir or file that cannot be made, read or written
        sys.stderr.write(f"error: {os_error_line(exc)}\n")
        sys.exit(EXIT_ERROR)
    except Exception as exc:
        show, exit_code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(exit_code, int):
            show()
            sys.exit(EXIT_ERROR if exit_code in (1, 2) else exit_code)
        line = registry_failure(exc)  # a database failure a command did not name: still one line
        if line is None:
            raise
        sys.stderr.write(f"error: {line}\n")
        sys.exit(EXIT_ERROR)
    sys.exit(code if isinstance(code, int) else EXIT_OK)
