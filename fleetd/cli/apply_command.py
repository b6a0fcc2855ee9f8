"""``fleetd apply``: make the fleet match the manifest, through ``fleetd.controlling.oneshot.apply_fleet``.

Given a manifest it plans afresh (``--target`` narrows the plan to some instances and what they depend on);
given one saved plan (``fleetd plan --out F``) it executes exactly that plan, or refuses it as stale. It asks
before changing anything unless ``--auto-approve``, and refuses outright without a terminal to ask on, so a
CI job never applies by accident. This module parses, asks and prints; the controller decides. The exit code
is the result's: 0 converged and healthy, 1 error, 3 applied but a replica is not running or cannot be placed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fleetd.cli.common import (
    EXIT_OK,
    agent_access,
    duration_flag,
    error,
    fail,
    load_or_exit,
    out,
    registry_errors,
)
from fleetd.cli.options import DatabaseUrl, Insecure, TlsCa, TlsCert, TlsKey

if TYPE_CHECKING:
    from fleetd.controlling.oneshot import ApplyResult
    from fleetd.executing.report import ActionOutcome
    from fleetd.planning.planfile import SavedPlan
    from fleetd.planning.plans import Plan
    from fleetd.transport.agent_api import InstallProgress

DEFAULT_LOCK_TIMEOUT = "30s"


def apply_command(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="PATH",
            help="Manifest files or directories of *.yaml files (default: fleet.yaml), or one plan saved with "
            "`fleetd plan --out`.",
            show_default=False,
            readable=False,  # the manifest loader names an unreadable file
        ),
    ] = None,
    *,
    auto_approve: Annotated[
        bool, typer.Option("--auto-approve", help="Apply without asking (required without a terminal).")
    ] = False,
    targets: Annotated[
        list[str] | None,
        typer.Option(
            "--target",
            metavar="NAME",
            help="Only change this instance (and the node actions it needs); may be given several times.",
            show_default=False,
        ),
    ] = None,
    allow_empty: Annotated[
        bool, typer.Option("--allow-empty", help="Allow a plan that unloads every running replica.")
    ] = False,
    lock_timeout: Annotated[
        str,
        typer.Option(
            "--lock-timeout",
            metavar="DURATION",
            help="How long to wait for another fleetd's apply to finish (a running `fleetd serve` keeps the "
            "lease: apply then stops at once and says so).",
        ),
    ] = DEFAULT_LOCK_TIMEOUT,
    database_url: DatabaseUrl = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_ca: TlsCa = None,
    insecure: Insecure = False,
) -> None:
    """Make the fleet match the manifest. Exit 0 converged and healthy, 1 on error, 3 when applied but something is
    unhealthy or unschedulable."""
    from fleetd.controlling.cycles import stale_reason
    from fleetd.controlling.oneshot import ApplyRequest, apply_fleet, manifest_targets_unknown
    from fleetd.manifest.revision import manifest_revision

    lock_timeout_s = duration_flag("--lock-timeout", lock_timeout) / 1000
    saved = _saved_plan(paths or [])
    if saved is not None and targets:
        fail("--target cannot narrow a saved plan; pass --target to `fleetd plan --out` instead")
    loaded = load_or_exit(saved.manifest_paths if saved is not None else paths or [Path("fleet.yaml")])
    assert loaded.desired is not None
    if saved is not None and (stale := stale_reason(saved.plan, loaded.desired, None)) is not None:
        fail(f"{', '.join(saved.manifest_paths)}: {stale}")
    unknown = manifest_targets_unknown(loaded.desired, targets or ())
    if unknown:
        fail(f"--target: no instance named {', '.join(map(repr, unknown))} in the manifest")
    revision = manifest_revision(loaded.paths) if saved is None else None
    request = ApplyRequest(
        loaded.desired,
        revision=revision.plan_revision() if revision is not None else None,
        saved=saved.plan if saved is not None else None,
        targets=tuple(targets or ()),
        allow_empty=allow_empty,
        lock_timeout_s=lock_timeout_s,
        access=agent_access(tls_cert, tls_key, tls_ca, insecure),
    )
    printer = _Printer(loaded.paths, auto_approve=auto_approve)
    with registry_errors(database_url):
        result = apply_fleet(request, database_url=database_url, listener=printer)
    raise typer.Exit(printer.finish(result))


class _Printer:
    """Shows the plan, asks, prints each outcome as it happens and the summary at the end."""

    def __init__(self, paths: Sequence[str], *, auto_approve: bool) -> None:
        self._paths = paths
        self._auto_approve = auto_approve
        self._started: float | None = None

    def planned(self, plan: Plan) -> None:
        from fleetd.planning.rendering import render_text

        out(render_text(plan, self._paths))

    def confirm(self, plan: Plan) -> str | None:
        count = len(plan.actions)
        if not self._auto_approve:
            if not sys.stdin.isatty():
                return "refusing to apply without confirmation: pass --auto-approve"
            if not typer.confirm(f"\nApply these {count} action{'s' if count != 1 else ''}?", default=False):
                return "apply cancelled; nothing was changed"
        out(f"\nApplying {count} action{'s' if count != 1 else ''}...\n")
        self._started = time.monotonic()
        return None

    def outcome(self, outcome: ActionOutcome) -> None:
        mark = {"ok": _mark("✓", "ok"), "failed": _mark("✗", "FAILED"), "skipped": _mark("-", "skipped")}
        seconds = f"{outcome.duration_ms / 1000:.1f} s"
        detail = outcome.message if outcome.status != "ok" else (outcome.replica_state or "")
        if outcome.status == "ok" and outcome.replica_state not in (None, "running"):
            detail = (
                f"{outcome.replica_state}: {outcome.message}" if outcome.message else outcome.replica_state or ""
            )
        line = f"  {mark[outcome.status]} {outcome.action_id} ({seconds})"
        out(f"{line}  {' '.join(detail.split())}\n" if detail else f"{line}\n")

    def progress(self, event: InstallProgress) -> None:
        """A backend install's progress, as it runs (pip's output; a source build is quiet for minutes)."""
        out(f"    {event.backend} {event.step}: {' '.join(event.message.split())}\n")

    def waiting(self, holder: str, timeout_s: float) -> None:
        sys.stderr.write(f"Waiting up to {timeout_s:g} s for the controller lease, held by {holder}...\n")

    def finish(self, result: ApplyResult) -> int:
        """Print the end of the apply; returns the exit code."""
        code = result.exit_code
        if result.error is not None:
            hint = result.error.startswith("plan refused") and "--allow-empty" not in result.error
            return error(f"{result.error}\nhint: pass --allow-empty to apply it anyway" if hint else result.error)
        plan = result.plan
        assert plan is not None
        if result.report is None:
            if not plan.unschedulable:
                out("No changes. The fleet matches the manifest.\n")
                return EXIT_OK
            self.planned(plan)
            out("\nNo changes can be made, but some replicas cannot be placed.\n")
            return code
        elapsed_s = time.monotonic() - (self._started or time.monotonic())
        out(_summary(plan, result, elapsed_s, result.report.exit_code(plan)))
        if result.lease_lost:
            sys.stderr.write("error: the controller lease was lost during the apply; another fleetd took over\n")
        return code


def _summary(plan: Plan, result: ApplyResult, elapsed_s: float, code: int) -> str:
    report = result.report
    assert report is not None
    ok = sum(1 for o in report.outcomes if o.status == "ok")
    lines = [
        "",
        f"Apply finished in {elapsed_s:.1f} s: {ok} succeeded, {len(report.failed())} failed, "
        f"{len(report.skipped())} skipped.",
    ]
    for outcome in report.unhealthy():
        lines.append(f"  {outcome.action_id}: the replica is {outcome.replica_state}")
    for item in plan.unschedulable:
        lines.append(f"  {item.instance}: {item.missing} replica{'s' if item.missing != 1 else ''} not placed")
    verdict = {
        0: "The fleet matches the manifest and is healthy.",
        3: "Applied, but the fleet is not healthy: see above.",
    }.get(code, "The apply did not complete: see above.")
    lines.append(verdict)
    return "\n".join(lines) + "\n"


def _saved_plan(paths: Sequence[Path]) -> SavedPlan | None:
    """The saved plan when the only argument is one (a JSON object with ``format_version``); else ``None``."""
    import json

    from fleetd.planning.planfile import PlanFileError, loads_plan

    if len(paths) != 1 or not paths[0].is_file():
        return None
    try:
        text = paths[0].read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None  # the manifest loader reports it, naming the file
    if not text.lstrip().startswith("{"):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or "format_version" not in data:
        return None
    try:
        return loads_plan(text)
    except PlanFileError as exc:
        fail(f"saved plan {paths[0]}: {exc}")


def _mark(symbol: str, fallback: str) -> str:
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        symbol.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return fallback
    return symbol
