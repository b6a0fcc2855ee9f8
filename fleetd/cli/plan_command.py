"""``fleetd plan``: what apply would do, Terraform-style. Exit 0 nothing to do, 2 changes pending, 1 error.

It parses the flags, loads the manifest, calls ``fleetd.controlling.oneshot.plan_fleet`` (the controller's
one plan path) and renders the plan; ``--out`` saves it for ``fleetd apply FILE``.
"""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fleetd.cli.common import (
    EXIT_CHANGES,
    EXIT_OK,
    agent_access,
    fail,
    load_or_exit,
    registry_errors,
    write_atomically,
)
from fleetd.cli.options import DatabaseUrl, Insecure, PathsArg, TlsCa, TlsCert, TlsKey

if TYPE_CHECKING:
    from fleetd.core.observed import ObservedState


class PlanFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"
    MARKDOWN = "markdown"


def plan_command(
    paths: PathsArg = None,
    *,
    observed_path: Annotated[
        Path | None,
        typer.Option(
            "--observed",
            metavar="FILE",
            help="Plan against this observed-state snapshot (fleetd status --format json) instead of the "
            "registry; touches no database or network.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", metavar="FILE", help="Save the plan here, for `fleetd apply FILE`.", show_default=False
        ),
    ] = None,
    output_format: Annotated[PlanFormat, typer.Option("--format", "-f", help="Output format.")] = PlanFormat.TEXT,
    allow_empty: Annotated[
        bool, typer.Option("--allow-empty", help="Allow a plan that unloads every running replica.")
    ] = False,
    revision: Annotated[
        str | None,
        typer.Option(
            "--revision",
            metavar="REVISION",
            help="The manifest's revision (e.g. a git SHA) to record in the plan.",
            show_default=False,
        ),
    ] = None,
    database_url: DatabaseUrl = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_ca: TlsCa = None,
    insecure: Insecure = False,
) -> None:
    """Show what apply would do. Exit 0 when nothing is to do, 2 when changes are pending, 1 on error."""
    from fleetd.controlling.oneshot import plan_fleet
    from fleetd.planning.planfile import dumps_plan
    from fleetd.planning.planner import PlanPolicy
    from fleetd.planning.plans import PlanRefused
    from fleetd.planning.rendering import render_json, render_markdown, render_text
    from fleetd.transport.security import SecurityError

    loaded = load_or_exit(paths or [Path("fleet.yaml")])
    assert loaded.desired is not None
    observed = _read_snapshot(observed_path) if observed_path is not None else None
    try:
        with registry_errors(database_url):
            result = plan_fleet(
                loaded.desired,
                database_url=database_url,
                policy=PlanPolicy(allow_empty=allow_empty),
                revision=revision,
                observed=observed,
                access=agent_access(tls_cert, tls_key, tls_ca, insecure),
            ).plan
    except SecurityError as exc:
        fail(str(exc))
    except PlanRefused as exc:
        hint = "" if "--allow-empty" in str(exc) else "\nhint: pass --allow-empty to plan it anyway"
        fail(f"plan refused: {exc}{hint}")
    renderers = {PlanFormat.TEXT: render_text, PlanFormat.JSON: render_json, PlanFormat.MARKDOWN: render_markdown}
    sys.stdout.write(renderers[output_format](result, loaded.paths))
    if out is not None:
        try:
            write_atomically(out, dumps_plan(result, loaded.paths))
        except OSError as exc:
            fail(f"cannot save the plan to {out}: {exc.strerror or exc}")
        sys.stderr.write(f"Saved the plan to {out}.\n")
    raise typer.Exit(EXIT_OK if result.converged else EXIT_CHANGES)  # a failed or missing replica is not "done"


def _read_snapshot(path: Path) -> ObservedState:
    """An observed-state snapshot from a file; any problem is one line naming the file (and JSON path), exit 1."""
    from fleetd.planning.observed_json import SnapshotError, loads_observed

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        fail(f"cannot read the observed snapshot {path}: {reason}")
    try:
        return loads_observed(text)
    except SnapshotError as exc:
        fail(f"observed snapshot {path}: {exc}")
