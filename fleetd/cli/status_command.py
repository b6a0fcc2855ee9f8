"""``fleetd status``: what the fleet looks like now, and whether it matches the manifest (Argo CD's sync and health).

It observes through the embedded mode, like ``fleetd apply``, so that it reports what the local agent sees (the
registry alone may be minutes old), and prints nodes and replicas. Given a manifest (or finding ``./fleet.yaml``)
it also says whether a plan would be empty (``Synced`` / ``OutOfSync``), how healthy the replicas are
(``Healthy`` / ``Progressing`` / ``Degraded``) and at which git revision the manifest is, since operators keep
their fleets in git (LESSONS.md: gpustack #5755). ``--format json`` writes the observed-state snapshot of
``fleetd.planning.observed_json`` (so ``fleetd plan --observed`` can read it) plus a top-level ``status`` object.

The helpers shared with ``fleetd apply`` live here too: loading a manifest or exiting with its diagnostics, the
manifest's git revision, and an observation that waits for adopted replicas' first probe.
"""

from __future__ import annotations

import enum
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fleetd.cli.options import DatabaseUrl

if TYPE_CHECKING:
    from fleetd.core.desired import DesiredState
    from fleetd.core.observed import ObservedNode, ObservedReplica, ObservedState
    from fleetd.daemon.embedded import Embedded
    from fleetd.manifest.loading import LoadedManifest

SETTLE_TIMEOUT_S = 10.0
"""How long an observation waits for replicas adopted as ``starting`` to get their first probe."""
GIT_TIMEOUT_S = 10.0


class StatusFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


class Sync(enum.StrEnum):
    SYNCED = "Synced"
    OUT_OF_SYNC = "OutOfSync"


class Health(enum.StrEnum):
    HEALTHY = "Healthy"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"


@dataclass(frozen=True, slots=True)
class Revision:
    """The manifest's git commit, and whether the manifest files differ from it (edited or untracked)."""

    commit: str
    dirty: bool

    def label(self) -> str:
        return f"{self.commit[:12]}{' (dirty)' if self.dirty else ''}"

    def plan_revision(self) -> str:
        """How a plan records it: the full SHA, ``-dirty`` appended when the files differ from the commit."""
        return f"{self.commit}-dirty" if self.dirty else self.commit

    def document(self) -> dict[str, Any]:
        return {"commit": self.commit, "dirty": self.dirty}


@dataclass(frozen=True, slots=True)
class FleetStatus:
    """Sync (only with a manifest) and health of one observation."""

    health: Health
    sync: Sync | None = None
    pending_actions: int | None = None
    unschedulable_replicas: int = 0
    manifest_paths: tuple[str, ...] = ()
    revision: Revision | None = None

    def document(self) -> dict[str, Any]:
        return {
            "sync": self.sync.value if self.sync is not None else None,
            "pending_actions": self.pending_actions,
            "unschedulable_replicas": self.unschedulable_replicas,
            "health": self.health.value,
            "manifest": list(self.manifest_paths) if self.manifest_paths else None,
            "revision": self.revision.document() if self.revision is not None else None,
        }


def status_command(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Manifest files or directories to compare with (default: ./fleet.yaml when it exists).",
            show_default=False,
        ),
    ] = None,
    *,
    output_format: Annotated[StatusFormat, typer.Option("--format", "-f", help="Output format.")] = (
        StatusFormat.TEXT
    ),
    database_url: DatabaseUrl = None,
) -> None:
    """Show nodes and replicas, and whether the fleet matches the manifest (sync) and is healthy. Exit 0."""
    from fleetd.cli.app import EXIT_OK, _registry_errors
    from fleetd.planning.observed_json import observed_document
    from fleetd.registry.engine import default_database_url

    manifest_paths = list(paths) if paths else ([Path("fleet.yaml")] if Path("fleet.yaml").exists() else [])
    loaded = load_or_exit(manifest_paths) if manifest_paths else None
    with _registry_errors(database_url or default_database_url()):
        observed, holder = _observe(database_url)
    if holder is not None:
        sys.stderr.write(f"note: {holder} holds the controller lease; showing the fleet as it last recorded it\n")
    status = fleet_status(observed, loaded)
    if output_format is StatusFormat.JSON:
        import json

        document = observed_document(observed)
        document["status"] = status.document()
        sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(render_status_text(observed, status))
    raise typer.Exit(EXIT_OK)


def _observe(database_url: str | None) -> tuple[ObservedState, str | None]:
    """The fleet as the local agent sees it, taken under the controller lease; while another controller holds
    the lease (a running ``fleetd serve``, an apply), the registry as that controller last recorded it, and its
    name. A second agent would supervise the same processes twice: two restarts of one crash."""
    from fleetd.cli import locking
    from fleetd.daemon.embedded import open_embedded
    from fleetd.registry.facade import open_registry

    registry = open_registry(database_url)
    try:
        try:
            held = locking.acquire(registry, locking.holder_id("status"), timeout_s=0)
        except locking.LockBusy as busy:
            return registry.snapshot(), busy.holder or "another fleetd"
        with locking.renewed(registry, held):
            embedded = open_embedded(database_url=database_url)
            try:
                return observe_settled(embedded), None
            finally:
                embedded.close(stop_replicas=False)
    finally:
        registry.engine.dispose()


# shared with fleetd apply ------------------------------------------------------------------------------------


def load_or_exit(paths: Sequence[Path | str]) -> LoadedManifest:
    """Load a manifest; when it is invalid, print its diagnostics on stderr and exit 1 (as ``fleetd plan``)."""
    from fleetd.cli.app import EXIT_ERROR, _summary
    from fleetd.cli.diagnostics_output import render_text
    from fleetd.manifest.loading import load_manifest

    loaded = load_manifest(paths)
    if loaded.desired is None:
        summary = _summary(
            loaded.paths or [str(p) for p in paths], len(loaded.errors), len(loaded.warnings), False
        )
        sys.stderr.write(render_text(loaded.diagnostics, {f.name: f.text for f in loaded.files}, summary))
        raise typer.Exit(EXIT_ERROR)
    return loaded


def manifest_revision(paths: Sequence[str | Path]) -> Revision | None:
    """The git commit of the checkout holding the manifest, and whether its files differ from it; ``None``
    outside a git checkout (or without git)."""
    import shutil
    import subprocess

    git = shutil.which("git")
    if git is None or not paths:
        return None
    first = Path(paths[0]).resolve()
    directory = first if first.is_dir() else first.parent
    try:
        head = subprocess.run(
            [git, "-C", str(directory), "rev-parse", "--verify", "HEAD"],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
        if head.returncode != 0:
            return None
        changes = subprocess.run(
            [git, "-C", str(directory), "status", "--porcelain", "--", *(str(Path(p).resolve()) for p in paths)],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    dirty = changes.returncode != 0 or bool(changes.stdout.strip())
    return Revision(head.stdout.strip(), dirty)


def observe_settled(embedded: Embedded, *, timeout_s: float = SETTLE_TIMEOUT_S) -> ObservedState:
    """``embedded.observe()`` once the replicas the agent adopted on start have had their first probe.

    An agent adopts a running replica as ``starting`` until a probe says otherwise; observing at once would
    report a healthy fleet as progressing, and change the observed fingerprint that a saved plan was made on.
    A replica still starting after ``timeout_s`` (a slow load) is reported as it is.
    """
    from fleetd.core.observed import ReplicaState

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(
        r.state is ReplicaState.STARTING for r in embedded.agent.list_replicas()
    ):
        time.sleep(0.05)  # polling the supervisor's verdict with a deadline
    return embedded.observe()


# computing and rendering ---------------------------------------------------------------------------------------


def fleet_status(observed: ObservedState, loaded: LoadedManifest | None) -> FleetStatus:
    health_only = fleet_health(observed, 0)
    if loaded is None or loaded.desired is None:
        return FleetStatus(health_only)
    pending, unschedulable = _pending(loaded.desired, observed)
    return FleetStatus(
        health=fleet_health(observed, unschedulable),
        sync=Sync.SYNCED if pending == 0 else Sync.OUT_OF_SYNC,
        pending_actions=pending,
        unschedulable_replicas=unschedulable,
        manifest_paths=loaded.paths,
        revision=manifest_revision(loaded.paths),
    )


def fleet_health(observed: ObservedState, unschedulable_replicas: int) -> Health:
    """Degraded when a replica is unhealthy or failed or one cannot be placed; Progressing while one starts or
    stops; Healthy otherwise (every replica running)."""
    from fleetd.core.observed import ReplicaState

    states = {r.state for r in observed.replicas}
    if unschedulable_replicas or states & {ReplicaState.UNHEALTHY, ReplicaState.FAILED}:
        return Health.DEGRADED
    if states & {ReplicaState.STARTING, ReplicaState.STOPPING}:
        return Health.PROGRESSING
    return Health.HEALTHY


def _pending(desired: DesiredState, observed: ObservedState) -> tuple[int, int]:
    """(actions a plan would take, replicas it could not place); a plan that empties the fleet counts too."""
    from fleetd.planning.planner import PlanPolicy, plan

    result = plan(desired, observed, now_ms=time.time_ns() // 1_000_000, policy=PlanPolicy(allow_empty=True))
    return len(result.actions), sum(u.missing for u in result.unschedulable)


def render_status_text(observed: ObservedState, status: FleetStatus) -> str:
    lines: list[str] = []
    node_rows = [_node_row(n) for n in observed.nodes]
    lines += ["Nodes:", *_table(("NAME", "STATUS", "GPU", "FREE / TOTAL", "BACKENDS"), node_rows)]
    if not node_rows:
        lines.append("  (none)")
    replica_rows = [_replica_row(r) for r in observed.replicas]
    lines += [
        "",
        "Replicas:",
        *_table(
            ("INSTANCE", "NODE", "INDEX", "STATE", "ADDRESS", "RESTARTS", "IN-FLIGHT", "LAST ERROR"), replica_rows
        ),
    ]
    if not replica_rows:
        lines.append("  (none)")
    lines.append("")
    if status.sync is not None:
        where = ", ".join(status.manifest_paths)
        revision = f" at {status.revision.label()}" if status.revision is not None else " (not in a git checkout)"
        lines.append(f"Manifest: {where}{revision}")
        pending = status.pending_actions or 0
        sync = (
            Sync.SYNCED.value
            if status.sync is Sync.SYNCED
            else f"{Sync.OUT_OF_SYNC.value} ({pending} action{'s' if pending != 1 else ''} pending)"
        )
        lines.append(f"Sync:     {sync}")
    health = status.health.value
    if status.unschedulable_replicas:
        n = status.unschedulable_replicas
        health += f" ({n} replica{'s' if n != 1 else ''} unschedulable)"
    lines.append(f"Health:   {health}")
    return "\n".join(lines) + "\n"


def _node_row(node: ObservedNode) -> tuple[str, ...]:
    if node.total_vram > 0:
        memory = f"{_approx(node.available_vram)} / {_approx(node.total_vram)}"
    else:
        memory = f"{_approx(node.available_ram)} / {_approx(node.total_ram)} RAM"
    return (
        node.name,
        node.status.value if node.approved else f"{node.status.value} (not approved)",
        node.gpu_vendor,
        memory,
        ", ".join(node.backends) or "-",
    )


def _replica_row(replica: ObservedReplica) -> tuple[str, ...]:
    error = " ".join((replica.last_error or "").split())
    if len(error) > 80:
        error = error[:77] + "..."
    return (
        replica.instance,
        replica.node,
        str(replica.replica),
        replica.state.value,
        replica.address or "-",
        str(replica.restarts),
        str(replica.in_flight),
        error or "-",
    )


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    if not rows:
        return []
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    return [
        "  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in (header, *rows)
    ]


def _approx(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
