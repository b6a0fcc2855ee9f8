"""Coordination: scheduling hysteresis, VRAM reservations, durable intent, leases, the apply log.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scheduling_state",
        sa.Column("instance", sa.String(63), nullable=False),
        sa.Column("unsatisfiable_ticks", sa.Integer(), nullable=False),
        sa.Column("cooldown_until_ms", sa.BigInteger()),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("instance", name=op.f("pk_scheduling_state")),
    )
    op.create_table(
        "vram_reservations",
        sa.Column("op_id", sa.String(255), nullable=False),
        sa.Column("node", sa.String(63), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=False),
        sa.Column("released_ms", sa.BigInteger()),
        sa.Column("release_reason", sa.String(16)),
        sa.Column("available_at_reserve", sa.BigInteger(), nullable=False),
        sa.Column("reserved_after", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("bytes > 0", name=op.f("ck_vram_reservations_bytes_positive")),
        sa.ForeignKeyConstraint(
            ["node"], ["nodes.name"], name=op.f("fk_vram_reservations_node_nodes"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("op_id", name=op.f("pk_vram_reservations")),
    )
    op.create_index(op.f("ix_vram_reservations_node_released_ms"), "vram_reservations", ["node", "released_ms"])
    op.create_index(
        op.f("ix_vram_reservations_released_ms_expires_ms"), "vram_reservations", ["released_ms", "expires_ms"]
    )
    op.create_table(
        "pending_ops",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("idempotency_key", sa.String(400), nullable=False),
        sa.Column("node", sa.String(63), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("op", sa.String(32), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_error", sa.Text()),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("state IN ('pending', 'running', 'done', 'dead')", name=op.f("ck_pending_ops_state")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pending_ops")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_pending_ops_idempotency_key")),
    )
    op.create_index(op.f("ix_pending_ops_state_next_attempt_ms"), "pending_ops", ["state", "next_attempt_ms"])
    op.create_table(
        "leases",
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("acquired_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )
    op.create_table(
        "apply_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("manifest_revision", sa.String(80)),
        sa.Column("manifest_digest", sa.String(80), nullable=False),
        sa.Column("plan_hash", sa.String(80), nullable=False),
        sa.Column("actions", sa.JSON(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("who", sa.String(255), nullable=False),
        sa.Column("lease_epoch", sa.BigInteger()),
        sa.Column("started_ms", sa.BigInteger(), nullable=False),
        sa.Column("finished_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_apply_log")),
    )
    op.create_index(op.f("ix_apply_log_started_ms"), "apply_log", ["started_ms"])


def downgrade() -> None:
    for index, table in (
        ("ix_apply_log_started_ms", "apply_log"),
        ("ix_pending_ops_state_next_attempt_ms", "pending_ops"),
        ("ix_vram_reservations_released_ms_expires_ms", "vram_reservations"),
        ("ix_vram_reservations_node_released_ms", "vram_reservations"),
    ):
        op.drop_index(index, table_name=table)
    for table in ("apply_log", "leases", "pending_ops", "vram_reservations", "scheduling_state"):
        op.drop_table(table)
