"""``fleetd status``: what the fleet looks like now, and whether it matches the manifest (Argo CD's sync and health).

It calls ``fleetd.controlling.oneshot.status_fleet`` (which observes through the local agent under the
controller lease, or reads the registry while another controller leads or when this user cannot write it) and
prints which registry it read, nodes and replicas; with a manifest (or finding ``./fleet.yaml``) also sync,
health and the manifest's git revision. ``--format json`` writes the observed-state snapshot of
``fleetd.planning.observed_json`` (so ``fleetd plan --observed`` can read it) plus a top-level ``status``
object. A registry no controller ever applied a plan to gets a warning on stderr: it is most likely not the
service's (the operator's own default state dir instead of ``/var/lib/fleetd``).
"""

from __future__ import annotations

import enum
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fleetd.cli.common import EXIT_OK, agent_access, fail, load_or_exit, redact_url, registry_errors
from fleetd.cli.options import DatabaseUrl, Insecure, TlsCa, TlsCert, TlsKey
from fleetd.cli.table_output import approx_size, one_line, table

if TYPE_CHECKING:
    from fleetd.controlling.oneshot import StatusReport
    from fleetd.controlling.status import FleetStatus
    from fleetd.core.observed import ObservedNode, ObservedReplica, ObservedState


SERVICE_STATE_DIR = "/var/lib/fleetd"
"""Where the systemd unit and the container image keep the service's state (``FLEETD_STATE_DIR``)."""


class StatusFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


def status_command(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            metavar="PATH",
            help="Manifest files or directories to compare with (default: ./fleet.yaml when it exists).",
            show_default=False,
            readable=False,  # the manifest loader names an unreadable file
        ),
    ] = None,
    *,
    output_format: Annotated[StatusFormat, typer.Option("--format", "-f", help="Output format.")] = (
        StatusFormat.TEXT
    ),
    database_url: DatabaseUrl = None,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_ca: TlsCa = None,
    insecure: Insecure = False,
) -> None:
    """Show nodes and replicas, and whether the fleet matches the manifest (sync) and is healthy. Exit 0."""
    from fleetd.controlling.oneshot import status_fleet
    from fleetd.controlling.status import Manifest
    from fleetd.manifest.revision import manifest_revision
    from fleetd.planning.observed_json import observed_document

    manifest_paths = list(paths) if paths else ([Path("fleet.yaml")] if Path("fleet.yaml").exists() else [])
    manifest = None
    if manifest_paths:
        loaded = load_or_exit(manifest_paths)
        assert loaded.desired is not None
        manifest = Manifest(loaded.desired, loaded.paths, manifest_revision(loaded.paths))
    from fleetd.transport.security import SecurityError

    access = agent_access(tls_cert, tls_key, tls_ca, insecure)
    with registry_errors(database_url):
        try:
            report = status_fleet(database_url, manifest, access)
        except SecurityError as exc:
            fail(str(exc))
    registry = redact_url(report.registry_url)
    _notes(report, registry)
    if output_format is StatusFormat.JSON:
        import json

        document = observed_document(report.observed)
        document["status"] = {**report.status.document(), "registry": registry}
        sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(render_status_text(report.observed, report.status, registry=registry))
    raise typer.Exit(EXIT_OK)


def _notes(report: StatusReport, registry: str) -> None:
    """What the reader should know about where the fleet was read: on stderr, one line each."""
    if report.holder is not None:
        sys.stderr.write(
            f"note: {report.holder} holds the controller lease; showing the fleet as it last recorded it\n"
        )
    elif report.read_only:
        sys.stderr.write(
            "note: this user cannot write the registry; showing the fleet as a controller last recorded it\n"
        )
    if not report.ever_applied:
        sys.stderr.write(
            f"warning: the registry {registry} has never been written by a controller (no fleetd apply or "
            f"serve applied a plan to it); is it the service's? The service keeps it in {SERVICE_STATE_DIR}: "
            f"set FLEETD_STATE_DIR={SERVICE_STATE_DIR}, or pass --database-url\n"
        )


def render_status_text(observed: ObservedState, status: FleetStatus, *, registry: str | None = None) -> str:
    from fleetd.controlling.status import Sync

    lines: list[str] = [f"Registry: {registry}", ""] if registry is not None else []
    node_rows = [_node_row(n, undeclared=n.name in status.undeclared_nodes) for n in observed.nodes]
    lines += ["Nodes:", *table(("NAME", "STATUS", "GPU", "FREE / TOTAL", "BACKENDS"), node_rows)]
    if not node_rows:
        lines.append("  (none)")
    unreachable = [n for n in observed.nodes if n.last_error]
    if unreachable:
        lines += ["", "Node errors (nothing new is placed on these nodes until their agent answers):"]
        lines += [f"  {n.name}: {' '.join(n.last_error.split())}" for n in unreachable if n.last_error]
    replica_rows = [_replica_row(r) for r in observed.replicas]
    lines += [
        "",
        "Replicas:",
        *table(
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
    lines.extend(f"  {line}" for line in (*status.unschedulable, *status.notes))
    return "\n".join(lines) + "\n"


def _node_row(node: ObservedNode, *, undeclared: bool) -> tuple[str, ...]:
    if node.total_vram > 0:
        memory = f"{approx_size(node.available_vram)} / {approx_size(node.total_vram)}"
    else:
        memory = f"{approx_size(node.available_ram)} / {approx_size(node.total_ram)} RAM"
    return (
        node.name,
        node.status.value + ("" if node.approved else " (not approved)") + (" (undeclared)" if undeclared else ""),
        node.gpu_vendor,
        memory,
        ", ".join(node.backends) or "-",
    )


def _replica_row(replica: ObservedReplica) -> tuple[str, ...]:
    return (
        replica.instance,
        replica.node,
        str(replica.replica),
        replica.state.value,
        replica.address or "-",
        str(replica.restarts),
        str(replica.in_flight),
        one_line(replica.last_error),
    )
