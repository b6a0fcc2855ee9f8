"""Join tokens (architecture.md §3, "Admission"): what lets a new agent register, kept so that the registry
alone cannot be used to join.

A token is shown once, when it is created (``fjt_`` and 43 URL-safe characters: 256 random bits); the registry
keeps its SHA-256, its expiry and how many registrations it still allows, under a short public id
(``jt-<8 hex>``) that listings and revocation use. Consuming one is a single conditional ``UPDATE`` that both
checks and decrements, so two agents racing for the last use cannot both get it, on SQLite or PostgreSQL.
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass, field

from sqlalchemy import Connection, and_, delete, select, update

from fleetd.registry.credentials import secret_hash
from fleetd.registry.dialects import insert_for
from fleetd.registry.tables import join_tokens

TOKEN_PREFIX = "fjt_"
_ID_ATTEMPTS = 8


class TokenVerdict(enum.StrEnum):
    """What a registration's token was found to be."""

    ACCEPTED = "accepted"
    UNKNOWN = "unknown"
    """No token with that hash: never issued, mistyped, or revoked."""
    EXPIRED = "expired"
    USED_UP = "used_up"


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A token just created. ``token`` is the secret: shown once to whoever created it, never stored, and left
    out of the repr (so a log line or a traceback that shows the object does not show the token)."""

    id: str
    token: str = field(repr=False)
    expires_ms: int
    uses: int


@dataclass(frozen=True, slots=True)
class JoinTokenInfo:
    """A token as listings show it: never its hash."""

    id: str
    created_ms: int
    expires_ms: int
    uses_left: int
    created_by: str | None
    expired: bool


def create(conn: Connection, *, now_ms: int, ttl_ms: int, uses: int, created_by: str | None) -> IssuedToken:
    """A new token valid for ``ttl_ms`` and ``uses`` registrations; only its hash is stored."""
    if ttl_ms <= 0 or uses < 1:
        raise ValueError(f"a join token needs a positive lifetime and at least one use (got {ttl_ms} ms, {uses})")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    digest = secret_hash(token)
    expires_ms = now_ms + ttl_ms
    for _ in range(_ID_ATTEMPTS):
        token_id = f"jt-{secrets.token_hex(4)}"
        inserted = conn.execute(
            insert_for(conn, join_tokens)
            .values(
                id=token_id,
                token_hash=digest,
                created_ms=now_ms,
                expires_ms=expires_ms,
                uses_left=uses,
                created_by=created_by,
            )
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(join_tokens.c.id)
        ).first()
        if inserted is not None:
            return IssuedToken(token_id, token, expires_ms, uses)
    raise RuntimeError(f"no free join token id after {_ID_ATTEMPTS} random tries")


def consume(conn: Connection, token: str, *, now_ms: int) -> TokenVerdict:
    """Use up one registration of ``token`` if it is known, unexpired and not used up, atomically.

    The check and the decrement are one statement; only when it matched nothing does a second query say why.
    """
    digest = secret_hash(token)
    taken = conn.execute(
        update(join_tokens)
        .where(
            and_(
                join_tokens.c.token_hash == digest,
                join_tokens.c.expires_ms > now_ms,
                join_tokens.c.uses_left > 0,
            )
        )
        .values(uses_left=join_tokens.c.uses_left - 1)
    )
    if taken.rowcount == 1:
        return TokenVerdict.ACCEPTED
    row = conn.execute(
        select(join_tokens.c.expires_ms, join_tokens.c.uses_left).where(join_tokens.c.token_hash == digest)
    ).one_or_none()
    if row is None:
        return TokenVerdict.UNKNOWN
    return TokenVerdict.USED_UP if row.uses_left <= 0 else TokenVerdict.EXPIRED


def list_tokens(conn: Connection, now_ms: int) -> tuple[JoinTokenInfo, ...]:
    """Every token, oldest first, with whether it has expired (used-up and expired ones stay until revoked)."""
    rows = conn.execute(
        select(
            join_tokens.c.id,
            join_tokens.c.created_ms,
            join_tokens.c.expires_ms,
            join_tokens.c.uses_left,
            join_tokens.c.created_by,
        ).order_by(join_tokens.c.created_ms, join_tokens.c.id)
    )
    return tuple(
        JoinTokenInfo(
            id=r.id,
            created_ms=r.created_ms,
            expires_ms=r.expires_ms,
            uses_left=r.uses_left,
            created_by=r.created_by,
            expired=r.expires_ms <= now_ms,
        )
        for r in rows
    )


def revoke(conn: Connection, token_id: str) -> bool:
    """Delete a token by its public id, so that it admits nobody; False when there is no such token."""
    return bool(conn.execute(delete(join_tokens).where(join_tokens.c.id == token_id)).rowcount)
