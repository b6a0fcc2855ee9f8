"""Alembic environment: runs on the connection that ``fleetd.registry.migrating`` hands in."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from fleetd.registry.engine import open_engine
from fleetd.registry.tables import metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


_connection = context.config.attributes.get("connection")
if _connection is not None:
    _run(_connection)
else:  # the alembic command line, with sqlalchemy.url set in its config
    with open_engine(context.config.get_main_option("sqlalchemy.url")).begin() as _conn:
        _run(_conn)
