"""Inventory: nodes, their labels and backends, instances and replicas.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("approved", sa.Boolean(), nullable=False),
        sa.Column("address", sa.String(255)),
        sa.Column("token_hash", sa.String(128)),
        sa.Column("gpu_vendor", sa.String(32), nullable=False),
        sa.Column("total_vram", sa.BigInteger(), nullable=False),
        sa.Column("available_vram", sa.BigInteger(), nullable=False),
        sa.Column("reserved_vram", sa.BigInteger(), nullable=False),
        sa.Column("total_ram", sa.BigInteger(), nullable=False),
        sa.Column("available_ram", sa.BigInteger(), nullable=False),
        sa.Column("max_replicas_per_model", sa.Integer(), nullable=False),
        sa.Column("last_heartbeat_ms", sa.BigInteger()),
        sa.Column("registered_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("reserved_vram >= 0", name=op.f("ck_nodes_reserved_not_negative")),
        sa.CheckConstraint(
            "status IN ('registering', 'pending', 'healthy', 'unhealthy', 'draining', 'offline')",
            name=op.f("ck_nodes_status"),
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_nodes")),
    )
    op.create_table(
        "node_labels",
        sa.Column("node", sa.String(63), nullable=False),
        sa.Column("key", sa.String(63), nullable=False),
        sa.Column("value", sa.String(63), nullable=False),
        sa.Column("source", sa.String(8), nullable=False),
        sa.CheckConstraint("source IN ('manifest', 'auto')", name=op.f("ck_node_labels_source")),
        sa.ForeignKeyConstraint(
            ["node"], ["nodes.name"], name=op.f("fk_node_labels_node_nodes"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("node", "key", name=op.f("pk_node_labels")),
    )
    op.create_table(
        "node_backends",
        sa.Column("node", sa.String(63), nullable=False),
        sa.Column("backend", sa.String(63), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("version", sa.String(255)),
        sa.Column("last_error", sa.Text()),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("state IN ('installing', 'installed', 'failed')", name=op.f("ck_node_backends_state")),
        sa.ForeignKeyConstraint(
            ["node"], ["nodes.name"], name=op.f("fk_node_backends_node_nodes"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("node", "backend", name=op.f("pk_node_backends")),
    )
    op.create_table(
        "instances",
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("backend", sa.String(63), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("vram_bytes", sa.BigInteger()),
        sa.Column("min_replicas", sa.Integer(), nullable=False),
        sa.Column("max_replicas", sa.Integer(), nullable=False),
        sa.Column("node_selector", sa.JSON(), nullable=False),
        sa.Column("allowed_nodes", sa.JSON()),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("route_policy", sa.String(32), nullable=False),
        sa.Column("placement", sa.String(16), nullable=False),
        sa.Column("auto_restart", sa.Boolean(), nullable=False),
        sa.Column("max_restarts", sa.Integer(), nullable=False),
        sa.Column("restart_delay_ms", sa.BigInteger(), nullable=False),
        sa.Column("restart_max_delay_ms", sa.BigInteger(), nullable=False),
        sa.Column("health", sa.JSON(), nullable=False),
        sa.Column("rollout", sa.JSON(), nullable=False),
        sa.Column("on_demand_start", sa.Boolean(), nullable=False),
        sa.Column("idle_timeout_ms", sa.BigInteger(), nullable=False),
        sa.Column("docker_enabled", sa.Boolean(), nullable=False),
        sa.Column("command_override", sa.JSON()),
        sa.Column("environment", sa.JSON(), nullable=False),
        sa.Column("config_hash", sa.String(80), nullable=False),
        sa.Column("applied_revision", sa.String(80)),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_instances")),
    )
    op.create_table(
        "replicas",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("instance", sa.String(63), nullable=False),
        sa.Column("node", sa.String(63), nullable=False),
        sa.Column("replica", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("address", sa.String(255)),
        sa.Column("pid", sa.Integer()),
        sa.Column("process_start", sa.String(64)),
        sa.Column("container_id", sa.String(128)),
        sa.Column("config_hash", sa.String(80), nullable=False),
        sa.Column("vram_bytes", sa.BigInteger(), nullable=False),
        sa.Column("restarts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text()),
        sa.Column("in_flight", sa.Integer(), nullable=False),
        sa.Column("last_used_ms", sa.BigInteger()),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "state IN ('starting', 'running', 'unhealthy', 'stopping', 'failed')", name=op.f("ck_replicas_state")
        ),
        sa.ForeignKeyConstraint(["node"], ["nodes.name"], name=op.f("fk_replicas_node_nodes"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_replicas")),
        sa.UniqueConstraint("instance", "node", "replica", name=op.f("uq_replicas_instance_node_replica")),
    )


def downgrade() -> None:
    for table in ("replicas", "instances", "node_backends", "node_labels", "nodes"):
        op.drop_table(table)
