"""``fleetd apply``: observe, plan, confirm and execute, in the embedded mode (DESIGN.md sections 3 and 5).

Given a manifest it plans afresh (``--target`` narrows the plan to some instances and what they depend on);
given one saved plan (``fleetd plan --out F``) it executes exactly that plan, after checking that neither the
manifest nor the fleet changed since it was made (LESSONS.md: Terraform applied a stale saved plan twice). It
asks before changing anything unless ``--auto-approve``, and refuses outright without a terminal to ask on, so a
CI job never applies by accident.

One controller applies at a time: the command holds the ``controller`` lease (``fleetd.cli.locking``) from
before the agent starts until the end, and hands its fencing epoch to the executor. The replicas it starts keep
running after it exits; the next agent on the node adopts them. The exit code is the report's: 0 converged and
healthy, 1 error, 3 applied but a replica is not running or cannot be placed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from fleetd.cli.options import DatabaseUrl

if TYPE_CHECKING:
    from fleetd.cli.locking import HeldLease
    from fleetd.executing.report import ActionOutcome, ApplyReport
    from fleetd.manifest.loading import LoadedManifest
    from fleetd.planning.planfile import SavedPlan
    from fleetd.planning.plans import Plan
    from fleetd.transport.agent_api import InstallProgress

DEFAULT_LOCK_TIMEOUT = "30s"


def apply_command(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Manifest files or directories of *.yaml files (default: fleet.yaml), or one plan saved with "
            "`fleetd plan --out`.",
            show_default=False,
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
            help="Only change this instance (and the node actions it needs); may be given several times.",
            show_default=False,
        ),
    ] = None,
    allow_empty: Annotated[
        bool, typer.Option("--allow-empty", help="Allow a plan that unloads every running replica.")
    ] = False,
    lock_timeout: Annotated[
        str,
        typer.Option("--lock-timeout", help="How long to wait for another fleetd's apply to finish."),
    ] = DEFAULT_LOCK_TIMEOUT,
    database_url: DatabaseUrl = None,
) -> None:
    """Make the fleet match the manifest. Exit 0 converged and healthy, 1 on error, 3 when applied but something is
    unhealthy or unschedulable."""
    from fleetd.cli import locking
    from fleetd.cli.app import EXIT_ERROR, _registry_errors
    from fleetd.cli.status_command import load_or_exit
    from fleetd.core.units import UnitError, parse_duration_ms
    from fleetd.registry.engine import default_database_url
    from fleetd.registry.facade import open_registry

    try:
        lock_timeout_s = parse_duration_ms(lock_timeout) / 1000
    except UnitError as exc:
        _fail(f"--lock-timeout: {exc}")
    saved = _saved_plan(paths or [])
    if saved is not None:
        if targets:
            _fail("--target cannot narrow a saved plan; pass --target to `fleetd plan --out` instead")
        loaded = load_or_exit(saved.manifest_paths)
        assert loaded.desired is not None
        if loaded.desired.digest != saved.plan.desired_digest:
            _fail(
                "the manifest changed since the plan was made "
                f"({', '.join(saved.manifest_paths)}: planned {_short(saved.plan.desired_digest)}, now "
                f"{_short(loaded.desired.digest)}); plan again"
            )
    else:
        loaded = load_or_exit(paths or [Path("fleet.yaml")])
        assert loaded.desired is not None
        unknown = sorted({t for t in targets or () if loaded.desired.instance(t) is None})
        if unknown:
            _fail(f"--target: no instance named {', '.join(map(repr, unknown))} in the manifest")

    url = database_url or default_database_url()
    with _registry_errors(url):
        lock_registry = open_registry(url)
        try:
            try:
                held = locking.acquire(lock_registry, locking.holder_id("apply"), timeout_s=lock_timeout_s)
            except locking.LockBusy as exc:
                _fail(str(exc))
            with locking.renewed(lock_registry, held):
                code = _apply_locked(
                    loaded,
                    saved,
                    targets=tuple(targets or ()),
                    allow_empty=allow_empty,
                    auto_approve=auto_approve,
                    database_url=database_url,
                    held=held,
                )
        finally:
            lock_registry.engine.dispose()
    if held.lost.is_set() and code != EXIT_ERROR:
        code = EXIT_ERROR
    raise typer.Exit(code)


def _apply_locked(
    loaded: LoadedManifest,
    saved: SavedPlan | None,
    *,
    targets: tuple[str, ...],
    allow_empty: bool,
    auto_approve: bool,
    database_url: str | None,
    held: HeldLease,
) -> int:
    """Everything that happens under the controller lease; returns the exit code."""
    from fleetd.cli.app import EXIT_ERROR, EXIT_OK
    from fleetd.cli.status_command import manifest_revision, observe_settled
    from fleetd.daemon.embedded import open_embedded
    from fleetd.executing import PlanMismatch, apply_plan, save_scheduling
    from fleetd.executing.report import EXIT_DEGRADED
    from fleetd.planning.planner import PlanPolicy, plan
    from fleetd.planning.plans import PlanRefused
    from fleetd.planning.rendering import render_text

    desired = loaded.desired
    assert desired is not None
    embedded = open_embedded(database_url=database_url)
    try:
        observed = observe_settled(embedded)
        if saved is not None:
            the_plan = saved.plan
            if observed.fingerprint != the_plan.observed_fingerprint:
                return _error(
                    "the fleet changed since the plan was made: plan again "
                    f"(planned on {_short(the_plan.observed_fingerprint)}, now {_short(observed.fingerprint)})"
                )
        else:
            revision = manifest_revision(loaded.paths)
            try:
                the_plan = plan(
                    desired,
                    observed,
                    now_ms=time.time_ns() // 1_000_000,
                    policy=PlanPolicy(allow_empty=allow_empty),
                    revision=revision.plan_revision() if revision is not None else None,
                )
            except PlanRefused as exc:
                hint = "" if "--allow-empty" in str(exc) else "hint: pass --allow-empty to apply it anyway\n"
                sys.stderr.write(f"error: plan refused: {exc}\n{hint}")
                return EXIT_ERROR
            save_scheduling(embedded.registry, the_plan.scheduling, held.fence)  # as serve does, every plan
            if targets:
                the_plan = only_targets(the_plan, targets)
        if the_plan.is_empty and not the_plan.unschedulable:
            _out("No changes. The fleet matches the manifest.\n")
            return EXIT_OK
        _out(render_text(the_plan, loaded.paths))
        if the_plan.is_empty:
            _out("\nNo changes can be made, but some replicas cannot be placed.\n")
            return EXIT_DEGRADED
        count = len(the_plan.actions)
        if not auto_approve:
            if not sys.stdin.isatty():
                return _error("refusing to apply without confirmation: pass --auto-approve")
            if not typer.confirm(f"\nApply these {count} action{'s' if count != 1 else ''}?", default=False):
                return _error("apply cancelled; nothing was changed")
        _out(f"\nApplying {count} action{'s' if count != 1 else ''}...\n")
        started = time.monotonic()
        try:
            report = apply_plan(
                the_plan,
                desired,
                embedded.registry,
                {embedded.node: embedded.agent},
                on_event=_print_outcome,
                on_progress=_print_progress,
                fence=held.fence,
                who=held.fence.holder,
            )
        except PlanMismatch as exc:
            return _error(str(exc))
        embedded.observe()  # the registry now reflects what the agent runs
        code = report.exit_code(the_plan)
        _out(_summary(the_plan, report, time.monotonic() - started, code))
        if held.lost.is_set():
            sys.stderr.write("error: the controller lease was lost during the apply; another fleetd took over\n")
        return code
    finally:
        embedded.close(stop_replicas=False)


def only_targets(plan: Plan, targets: Sequence[str]) -> Plan:
    """The actions of the ``targets`` instances and, transitively, every action they depend on (a backend
    install, a node approval or labels, an eviction); unschedulable entries of other instances are dropped."""
    wanted = set(targets)
    by_id = {a.id: a for a in plan.actions}
    keep: set[str] = set()
    stack = [a.id for a in plan.actions if a.instance in wanted]
    while stack:
        action_id = stack.pop()
        if action_id in keep:
            continue
        keep.add(action_id)
        stack.extend(dep for dep in by_id[action_id].depends_on if dep in by_id)
    return replace(
        plan,
        actions=tuple(a for a in plan.actions if a.id in keep),
        unschedulable=tuple(u for u in plan.unschedulable if u.instance in wanted),
    )


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
        _fail(f"saved plan {paths[0]}: {exc}")


def _print_progress(event: InstallProgress) -> None:
    """A backend install's progress, as it runs (pip's output; a source build is quiet for minutes)."""
    _out(f"    {event.backend} {event.step}: {' '.join(event.message.split())}\n")


def _print_outcome(outcome: ActionOutcome) -> None:
    mark = {"ok": _mark("✓", "ok"), "failed": _mark("✗", "FAILED"), "skipped": _mark("-", "skipped")}
    seconds = f"{outcome.duration_ms / 1000:.1f} s"
    detail = outcome.message if outcome.status != "ok" else (outcome.replica_state or "")
    if outcome.status == "ok" and outcome.replica_state not in (None, "running"):
        detail = f"{outcome.replica_state}: {outcome.message}" if outcome.message else outcome.replica_state or ""
    line = f"  {mark[outcome.status]} {outcome.action_id} ({seconds})"
    _out(f"{line}  {' '.join(detail.split())}\n" if detail else f"{line}\n")


def _summary(plan: Plan, report: ApplyReport, elapsed_s: float, code: int) -> str:
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


def _mark(symbol: str, fallback: str) -> str:
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        symbol.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return fallback
    return symbol


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _short(value: str) -> str:
    algorithm, _, hexdigest = value.partition(":")
    return f"{algorithm}:{hexdigest[:12]}" if hexdigest else value or "(none)"


def _error(message: str) -> int:
    from fleetd.cli.app import EXIT_ERROR

    sys.stderr.write(f"error: {message}\n")
    return EXIT_ERROR


def _fail(message: str) -> NoReturn:
    """Print ``error: message`` and exit 1."""
    raise typer.Exit(_error(message))
