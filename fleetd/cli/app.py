"""The typer application: ``fleetd validate``, ``schema``, ``inspect``, ``plan``, ``db`` and ``version``.

Exit codes follow DESIGN.md section 5: 0 valid / nothing to do, 1 error or invalid, 2 changes pending
(plan). Usage errors exit 1 too, so that CI never mistakes a typo in a flag for "changes pending".
"""

from __future__ import annotations

import enum
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fleetd.cli.apply_command import apply_command
from fleetd.cli.options import DatabaseUrl
from fleetd.cli.serve_command import serve
from fleetd.cli.status_command import status_command

if TYPE_CHECKING:
    from fleetd.core.observed import ObservedState

app = typer.Typer(
    name="fleetd",
    help="Keep a fleet of self-hosted LLM inference servers in the state that fleet.yaml declares.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2

PathsArg = Annotated[
    list[Path] | None,
    typer.Argument(
        help="Manifest files or directories of *.yaml files (default: fleet.yaml).", show_default=False
    ),
]


class ValidateFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"
    GITHUB = "github"


class InspectFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"
    YAML = "yaml"


class PlanFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"
    MARKDOWN = "markdown"


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
    summary = _summary(
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
        typer.Option("--check", help="Compare with this file instead of printing; exit 1 when it differs."),
    ] = None,
) -> None:
    """Print the manifest's JSON Schema (committed at schemas/fleet.schema.json)."""
    from fleetd.manifest.schema import schema_text

    text = schema_text()
    if check is None:
        sys.stdout.write(text)
        return
    current = check.read_text(encoding="utf-8") if check.exists() else ""
    if current != text:
        sys.stderr.write(f"{check} is out of date; regenerate it with: fleetd schema > {check}\n")
        raise typer.Exit(EXIT_ERROR)
    sys.stdout.write(f"{check} is up to date\n")


@app.command()
def inspect(
    paths: PathsArg = None,
    output_format: Annotated[InspectFormat, typer.Option("--format", "-f", help="Output format.")] = (
        InspectFormat.TEXT
    ),
) -> None:
    """Show the desired state a valid manifest resolves to: defaults merged, units resolved, secrets redacted."""
    from fleetd.cli.desired_output import render_desired_json, render_desired_text
    from fleetd.cli.diagnostics_output import render_text
    from fleetd.manifest.dumping import dump_manifest
    from fleetd.manifest.loading import load_manifest

    loaded = load_manifest(paths or [Path("fleet.yaml")])
    if loaded.desired is None or loaded.manifest is None:
        summary = _summary(loaded.paths, len(loaded.errors), len(loaded.warnings), False)
        sys.stderr.write(render_text(loaded.diagnostics, {f.name: f.text for f in loaded.files}, summary))
        raise typer.Exit(EXIT_ERROR)
    if output_format is InspectFormat.JSON:
        sys.stdout.write(render_desired_json(loaded.desired, loaded.paths))
    elif output_format is InspectFormat.YAML:
        sys.stdout.write(dump_manifest(loaded.manifest))
    else:
        sys.stdout.write(render_desired_text(loaded.desired, loaded.paths))


db_app = typer.Typer(help="The registry database.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(database_url: DatabaseUrl = None) -> None:
    """Migrate the registry schema to the newest revision (fleetd also does this on start)."""
    from fleetd.registry.engine import default_database_url, open_engine
    from fleetd.registry.migrating import current_revision, upgrade

    where = database_url or default_database_url()
    with _registry_errors(where):
        engine = open_engine(database_url)
        before = current_revision(engine)
        after = upgrade(engine)
    if before == after:
        sys.stdout.write(f"registry at {_redact_url(where)} is up to date (revision {after})\n")
    else:
        sys.stdout.write(f"registry at {_redact_url(where)} upgraded from {before or 'empty'} to {after}\n")


@db_app.command("current")
def db_current(database_url: DatabaseUrl = None) -> None:
    """Print the registry's schema revision and the newest one this fleetd ships."""
    from fleetd.registry.engine import default_database_url, open_engine
    from fleetd.registry.migrating import current_revision, head_revision

    with _registry_errors(database_url or default_database_url()):
        current = current_revision(open_engine(database_url))
    head = head_revision()
    sys.stdout.write(f"current {current or 'empty'}, head {head}\n")
    raise typer.Exit(EXIT_OK if current == head else EXIT_ERROR)


@contextmanager
def _registry_errors(url: str) -> Iterator[None]:
    """Turn a database failure into one line that says where and what, and exit 1 (no traceback)."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        sys.stderr.write(f"error: registry at {_redact_url(url)}: {reason}\n")
        raise typer.Exit(EXIT_ERROR) from None


def _redact_url(url: str) -> str:
    """Hide a password in a database URL before printing it."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@app.command("plan")
def plan_command(
    paths: PathsArg = None,
    *,
    observed_path: Annotated[
        Path | None,
        typer.Option(
            "--observed",
            help="Plan against this observed-state snapshot (fleetd status --format json) instead of the "
            "registry; touches no database or network.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Save the plan here, for `fleetd apply FILE`.", show_default=False),
    ] = None,
    output_format: Annotated[PlanFormat, typer.Option("--format", "-f", help="Output format.")] = PlanFormat.TEXT,
    allow_empty: Annotated[
        bool, typer.Option("--allow-empty", help="Allow a plan that unloads every running replica.")
    ] = False,
    revision: Annotated[
        str | None,
        typer.Option(
            "--revision",
            help="The manifest's revision (e.g. a git SHA) to record in the plan.",
            show_default=False,
        ),
    ] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Show what apply would do. Exit 0 when nothing is to do, 2 when changes are pending, 1 on error."""
    from fleetd.cli.diagnostics_output import render_text as render_diagnostics
    from fleetd.manifest.loading import load_manifest
    from fleetd.planning.planfile import dumps_plan
    from fleetd.planning.planner import PlanPolicy, plan
    from fleetd.planning.plans import PlanRefused
    from fleetd.planning.rendering import render_json, render_markdown, render_text

    loaded = load_manifest(paths or [Path("fleet.yaml")])
    if loaded.desired is None:
        summary = _summary(
            loaded.paths or [str(p) for p in paths or [Path("fleet.yaml")]],
            len(loaded.errors),
            len(loaded.warnings),
            False,
        )
        sys.stderr.write(render_diagnostics(loaded.diagnostics, {f.name: f.text for f in loaded.files}, summary))
        raise typer.Exit(EXIT_ERROR)
    if observed_path is not None:
        observed = _read_snapshot(observed_path)
    else:
        from fleetd.registry.engine import default_database_url
        from fleetd.registry.facade import open_registry

        with _registry_errors(database_url or default_database_url()):
            observed = open_registry(database_url).snapshot()
        if database_url is None and not loaded.desired.nodes_declared:
            from fleetd.daemon.embedded import preview_local_node

            observed = preview_local_node(observed)  # the embedded mode's one node, before anything registered it
    try:
        result = plan(
            loaded.desired,
            observed,
            now_ms=time.time_ns() // 1_000_000,
            policy=PlanPolicy(allow_empty=allow_empty),
            revision=revision,
        )
    except PlanRefused as exc:
        hint = "" if "--allow-empty" in str(exc) else "hint: pass --allow-empty to plan it anyway\n"
        sys.stderr.write(f"error: plan refused: {exc}\n{hint}")
        raise typer.Exit(EXIT_ERROR) from None
    renderers = {PlanFormat.TEXT: render_text, PlanFormat.JSON: render_json, PlanFormat.MARKDOWN: render_markdown}
    sys.stdout.write(renderers[output_format](result, loaded.paths))
    if out is not None:
        try:
            _write_atomically(out, dumps_plan(result, loaded.paths))
        except OSError as exc:
            sys.stderr.write(f"error: cannot save the plan to {out}: {exc.strerror or exc}\n")
            raise typer.Exit(EXIT_ERROR) from None
        sys.stderr.write(f"Saved the plan to {out}.\n")  # `fleetd apply PLANFILE` arrives with the daemon issue
    raise typer.Exit(EXIT_OK if result.is_empty else EXIT_CHANGES)


def _read_snapshot(path: Path) -> ObservedState:
    """An observed-state snapshot from a file; any problem is one line naming the file (and JSON path), exit 1."""
    from fleetd.planning.observed_json import SnapshotError, loads_observed

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        sys.stderr.write(f"error: cannot read the observed snapshot {path}: {reason}\n")
        raise typer.Exit(EXIT_ERROR) from None
    try:
        return loads_observed(text)
    except SnapshotError as exc:
        sys.stderr.write(f"error: observed snapshot {path}: {exc}\n")
        raise typer.Exit(EXIT_ERROR) from None


def _write_atomically(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path`` and rename it over: a reader never sees half a plan."""
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


app.command("apply")(apply_command)
app.command("status")(status_command)
app.command("serve")(serve)


@app.command()
def version() -> None:
    """Print fleetd's version."""
    from fleetd import __version__

    sys.stdout.write(f"fleetd {__version__}\n")


def _summary(paths: list[str] | tuple[str, ...], errors: int, warnings: int, valid: bool) -> str:
    where = ", ".join(paths) if paths else "manifest"
    counts = f"{errors} error{'s' if errors != 1 else ''}, {warnings} warning{'s' if warnings != 1 else ''}"
    return f"{where}: {'valid' if valid else 'invalid'} ({counts})"


def main() -> None:
    """Console-script entry point.

    Runs typer outside its standalone mode so that usage errors (exit 2 in click) become exit 1: exit 2 means
    "changes pending" to CI. Click's exceptions are matched by shape because typer may vendor its own click.
    """
    try:
        if sys.argv[1:] == ["version"]:
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
    except Exception as exc:
        show, exit_code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if not callable(show) or not isinstance(exit_code, int):
            raise
        show()
        sys.exit(EXIT_ERROR if exit_code in (1, 2) else exit_code)
    sys.exit(code if isinstance(code, int) else EXIT_OK)
