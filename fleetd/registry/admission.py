"""Admitting a node: its join token spent, the node registered and its credential stored, in ONE transaction
(architecture.md §3, "Admission"), so that a crash between the steps cannot spend a token without admitting
the node, nor admit a node without spending the token. Only hashes are stored."""

from __future__ import annotations

import enum

from sqlalchemy import select

from fleetd.core.observed import NodeStatus
from fleetd.registry import credentials, join_tokens, nodes
from fleetd.registry.facade import Registry
from fleetd.registry.tables import nodes as node_rows


class Refusal(enum.StrEnum):
    """Why an admission was refused (the reason the agent logs and the metric label)."""

    UNKNOWN_TOKEN = "unknown_token"
    EXPIRED_TOKEN = "expired_token"
    USED_UP_TOKEN = "used_up_token"
    NAME_TAKEN = "name_taken"
    BAD_CREDENTIAL = "bad_credential"
    UNKNOWN_NODE = "unknown_node"


_TOKEN_REFUSALS = {
    join_tokens.TokenVerdict.UNKNOWN: Refusal.UNKNOWN_TOKEN,
    join_tokens.TokenVerdict.EXPIRED: Refusal.EXPIRED_TOKEN,
    join_tokens.TokenVerdict.USED_UP: Refusal.USED_UP_TOKEN,
}


def admit_with_token(
    registry: Registry, node: str, token: str, credential_hash: str, *, address: str | None
) -> NodeStatus | Refusal:
    """Spend ``token`` and register ``node`` with ``credential_hash``; its status, or why not (nothing changed).

    A name that already has a credential is refused even with a valid token: a token must not let anyone take
    over a node that joined before (``fleetd node remove`` it first to admit it again)."""
    now = registry.clock()
    with registry.engine.begin() as conn:
        if credentials.credential_hash(conn, node) is not None:
            return Refusal.NAME_TAKEN
        verdict = join_tokens.consume(conn, token, now_ms=now)
        if verdict is not join_tokens.TokenVerdict.ACCEPTED:
            return _TOKEN_REFUSALS[verdict]  # the token's update matched no row: nothing was written
        status = nodes.register(conn, node, nodes.NodeFacts(), now_ms=now, address=address)
        credentials.set_credential(conn, node, credential_hash)
        return status


def check_credential(
    registry: Registry, node: str, credential_hash: str, *, address: str | None
) -> NodeStatus | Refusal:
    """A returning node: its credential must match; its address is refreshed."""
    with registry.engine.begin() as conn:
        stored = credentials.credential_hash(conn, node)
        if stored is None:
            return Refusal.UNKNOWN_NODE
        if stored != credential_hash:
            return Refusal.BAD_CREDENTIAL
        if address is not None:
            conn.execute(node_rows.update().where(node_rows.c.name == node).values(address=address))
        status = conn.execute(select(node_rows.c.status).where(node_rows.c.name == node)).scalar_one()
        return NodeStatus(status)
