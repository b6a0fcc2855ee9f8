"""``fleetd node ...``: join tokens (``token create|list|revoke``) and registered nodes (``list``, ``approve``,
``drain``, ``undrain``, ``remove``), the admission steps of architecture.md §3 done by hand.

This module parses flags and prints; ``fleetd.controlling.node_admin`` decides. ``token create`` writes the
token, and nothing else, on stdout (``TOKEN=$(fleetd node token create)``) and its id and expiry on stderr: the
token is shown this once and the registry keeps only its hash.
"""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fleetd.cli.common import duration_flag, fail, out, registry_errors
from fleetd.cli.help_format import FleetdTyper
from fleetd.cli.options import DatabaseUrl
from fleetd.cli.table_output import approx_size, one_line, table

if TYPE_CHECKING:
    from fleetd.controlling.node_admin import NodeChange, NodeRow
    from fleetd.registry.join_tokens import JoinTokenInfo

node_app = FleetdTyper(help="Registered nodes: join tokens, approval, draining, removal.", no_args_is_help=True)
token_app = FleetdTyper(help="Join tokens, which let new agents register.", no_args_is_help=True)
node_app.add_typer(token_app, name="token")

NodeName = Annotated[
    str,
    typer.Argument(metavar="NAME", help="The node's name (`fleetd node list` shows them).", show_default=False),
]


class ListFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


FormatOption = Annotated[ListFormat, typer.Option("--format", "-f", help="Output format.")]


@contextmanager
def _admin(database_url: str | None) -> Iterator[None]:
    """A refusal or a database failure becomes one line on stderr and exit 1."""
    from fleetd.controlling.node_admin import NodeAdminError

    with registry_errors(database_url):
        try:
            yield
        except NodeAdminError as exc:
            fail(str(exc))


@token_app.command("create")
def token_create(
    ttl: Annotated[
        str,
        typer.Option(
            "--ttl", metavar="DURATION", help="How long the token admits registrations (at most 30d), e.g. 1h, 2d."
        ),
    ] = "1h",
    uses: Annotated[int, typer.Option("--uses", metavar="N", help="How many nodes may register with it.")] = 1,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a join token: printed once on stdout, alone (its id and expiry go to stderr)."""
    from fleetd.controlling.node_admin import MAX_TOKEN_TTL_MS, create_token
    from fleetd.core.timestamps import iso_from_ms
    from fleetd.core.units import format_duration

    ttl_ms = duration_flag("--ttl", ttl)
    if not 0 < ttl_ms <= MAX_TOKEN_TTL_MS:
        fail(f"--ttl {ttl}: a join token lives more than 0s and at most 30d; e.g. --ttl 1h")
    if uses < 1:
        fail(f"--uses {uses}: a join token admits at least one node; e.g. --uses 1")
    with _admin(database_url):
        issued = create_token(database_url, ttl_ms, uses)
    out(f"{issued.token}\n")
    plural = "s" if uses != 1 else ""
    sys.stderr.write(
        f"join token {issued.id}: {uses} use{plural}, expires {iso_from_ms(issued.expires_ms)} (in {format_duration(ttl_ms)}); "
        "it is shown only now\n"
    )


@token_app.command("list")
def token_list(output_format: FormatOption = ListFormat.TEXT, database_url: DatabaseUrl = None) -> None:
    """List join tokens by id, with expiry and uses left (never the tokens themselves)."""
    from fleetd.controlling.node_admin import list_tokens

    with _admin(database_url):
        tokens = list_tokens(database_url)
    if output_format is ListFormat.JSON:
        out(json.dumps({"tokens": [_token_document(t) for t in tokens]}, indent=2) + "\n")
    elif not tokens:
        out("no join tokens; `fleetd node token create` makes one\n")
    else:
        header = ("ID", "EXPIRES", "USES LEFT", "CREATED BY")
        out("\n".join(table(header, [_token_row(t) for t in tokens], indent="")) + "\n")


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(metavar="ID", help="The token's id (jt-...).", show_default=False)],
    database_url: DatabaseUrl = None,
) -> None:
    """Delete a join token, so that no node can register with it any more."""
    from fleetd.controlling.node_admin import revoke_token

    with _admin(database_url):
        revoke_token(database_url, token_id)
    out(f"join token {token_id} revoked\n")


@node_app.command("list")
def node_list(output_format: FormatOption = ListFormat.TEXT, database_url: DatabaseUrl = None) -> None:
    """List registered nodes: status, approval, address, GPU memory, last heartbeat, last error."""
    from fleetd.controlling.node_admin import list_nodes

    with _admin(database_url):
        rows = list_nodes(database_url)
    if output_format is ListFormat.JSON:
        out(json.dumps({"nodes": [_node_document(r) for r in rows]}, indent=2, ensure_ascii=False) + "\n")
    elif not rows:
        out("no nodes registered\n")
    else:
        header = ("NAME", "STATUS", "ADDRESS", "GPU", "VRAM FREE / TOTAL", "HEARTBEAT", "REPLICAS", "LAST ERROR")
        out("\n".join(table(header, [_node_row(r) for r in rows], indent="")) + "\n")


@node_app.command("approve")
def node_approve(name: NodeName, database_url: DatabaseUrl = None) -> None:
    """Approve a node, so that replicas can be placed on it (a manifest's `approved: true` does it too)."""
    from fleetd.controlling.node_admin import approve

    with _admin(database_url):
        change = approve(database_url, name)
    if not change.was_approved:
        out(f"node {name} approved ({_transition(change)})\n")
    else:
        out(f"node {name} was approved already ({change.after})\n")


@node_app.command("drain")
def node_drain(name: NodeName, database_url: DatabaseUrl = None) -> None:
    """Place nothing new on a node and have its replicas moved off (a manifest's `drain: true` does it too)."""
    from fleetd.controlling.node_admin import drain

    with _admin(database_url):
        change = drain(database_url, name)
    if change.changed:
        out(f"node {name} draining (was {change.before}); the controller moves its replicas off\n")
    else:
        out(f"node {name} was draining already\n")


@node_app.command("undrain")
def node_undrain(name: NodeName, database_url: DatabaseUrl = None) -> None:
    """Let a draining node take replicas again (while the manifest says `drain: true`, it is drained again)."""
    from fleetd.controlling.node_admin import undrain

    with _admin(database_url):
        change = undrain(database_url, name)
    if change.changed:
        out(f"node {name} undrained ({_transition(change)})\n")
    else:
        out(f"node {name} is not draining ({change.after}); nothing to do\n")


@node_app.command("remove")
def node_remove(
    name: NodeName,
    force: Annotated[
        bool,
        typer.Option("--force", help="Also delete the node's replica rows (their processes are not stopped)."),
    ] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Forget a node. Refused while replica rows name it, unless --force."""
    from fleetd.controlling.node_admin import remove

    with _admin(database_url):
        removed = remove(database_url, name, force=force)
    held = removed.replicas
    rows = f" with {len(held)} replica row{'s' if len(held) != 1 else ''}" if held else ""
    out(f"node {name} removed{rows}\n")


def _transition(change: NodeChange) -> str:
    return f"{change.before} -> {change.after}" if change.before != change.after else str(change.after)


def _node_row(row: NodeRow) -> tuple[str, ...]:
    vram = f"{approx_size(row.available_vram)} / {approx_size(row.total_vram)}" if row.total_vram else "-"
    return (
        row.name,
        row.status.value + ("" if row.approved else " (not approved)"),
        row.address or "-",
        row.gpu_vendor,
        vram,
        _ago(row.heartbeat_age_ms),
        str(row.replicas),
        one_line(row.last_error, 60),
    )


def _node_document(row: NodeRow) -> dict[str, Any]:
    return {
        "name": row.name,
        "status": row.status.value,
        "approved": row.approved,
        "address": row.address,
        "gpu_vendor": row.gpu_vendor,
        "total_vram": row.total_vram,
        "available_vram": row.available_vram,
        "heartbeat_age_ms": row.heartbeat_age_ms,
        "replicas": row.replicas,
        "last_error": row.last_error,
    }


def _token_row(token: JoinTokenInfo) -> tuple[str, ...]:
    from fleetd.core.timestamps import iso_from_ms

    return (
        token.id,
        iso_from_ms(token.expires_ms) + (" (expired)" if token.expired else ""),
        str(token.uses_left) + (" (used up)" if token.uses_left == 0 else ""),
        token.created_by or "-",
    )


def _token_document(token: JoinTokenInfo) -> dict[str, Any]:
    from fleetd.core.timestamps import iso_from_ms

    return {
        "id": token.id,
        "created": iso_from_ms(token.created_ms),
        "expires": iso_from_ms(token.expires_ms),
        "expired": token.expired,
        "uses_left": token.uses_left,
        "created_by": token.created_by,
    }


def _ago(ms: int | None) -> str:
    """``95_000`` -> ``"1m ago"``: the largest whole unit; ``never`` for a node that never sent a heartbeat."""
    if ms is None:
        return "never"
    seconds = ms // 1000
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"
