"""Migrations build exactly ``tables.metadata``, from empty or from the first revision, and can go back down."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, select

from fleetd.registry import nodes
from fleetd.registry.engine import open_engine
from fleetd.registry.migrating import current_revision, head_revision, upgrade
from fleetd.registry.tables import metadata
from fleetd.registry.tables import nodes as nodes_table
from tests.conftest import Database, ManualClock

INVENTORY = {"instances", "node_backends", "node_labels", "nodes", "replicas"}


@pytest.fixture
def empty_engine(empty_database: Database) -> Iterator[Engine]:
    engine = open_engine(empty_database.url)
    yield engine
    engine.dispose()


def schema_diffs(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def downgrade(engine: Engine, revision: str) -> None:
    """Alembic's own downgrade, on the connection, as ``migrating.upgrade`` runs upgrades."""
    with engine.begin() as conn:
        config = Config()
        config.set_main_option("script_location", "fleetd.registry:migrations")
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


def test_upgrade_from_empty_builds_exactly_the_declared_schema(empty_engine: Engine) -> None:
    assert current_revision(empty_engine) is None
    assert tables(empty_engine) == set()
    assert upgrade(empty_engine) == head_revision() == "0009"
    assert current_revision(empty_engine) == "0009"
    assert tables(empty_engine) == set(metadata.tables)
    assert schema_diffs(empty_engine) == []
    assert upgrade(empty_engine) == "0009"  # at head: nothing to do, nothing breaks


def test_upgrade_from_the_first_revision_keeps_data(empty_engine: Engine, clock: ManualClock) -> None:
    assert upgrade(empty_engine, "0001") == "0001"
    assert tables(empty_engine) == INVENTORY
    assert schema_diffs(empty_engine) != []  # the coordination tables are still missing
    with empty_engine.begin() as conn:
        nodes.register(conn, "gpu-a", nodes.NodeFacts(total_vram=8 * 1024**3), now_ms=clock())
    assert upgrade(empty_engine) == "0009"
    assert tables(empty_engine) == set(metadata.tables)
    assert schema_diffs(empty_engine) == []
    with empty_engine.connect() as conn:
        assert conn.execute(select(nodes_table.c.name)).scalars().all() == ["gpu-a"]


def test_downgrade_to_base_then_upgrade_again(empty_engine: Engine) -> None:
    upgrade(empty_engine)
    downgrade(empty_engine, "0001")
    assert current_revision(empty_engine) == "0001"
    assert tables(empty_engine) == INVENTORY
    downgrade(empty_engine, "base")
    assert current_revision(empty_engine) is None
    assert tables(empty_engine) == set()
    assert upgrade(empty_engine) == "0009"
    assert schema_diffs(empty_engine) == []
