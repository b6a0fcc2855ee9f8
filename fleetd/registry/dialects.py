"""The few statements whose spelling differs between SQLite and PostgreSQL (upserts, row locks)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite


def insert_for(connection: Connection, table: Table) -> Any:
    """An ``INSERT`` that supports ``on_conflict_do_update`` / ``on_conflict_do_nothing`` on this dialect."""
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)
