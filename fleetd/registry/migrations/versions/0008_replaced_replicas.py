"""Replicas forgotten on a lost node and replaced elsewhere: kept as tombstones so that, when the node returns
and reports them again, the planner stops those first (they are the fleet's surplus, not its new replicas).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "replaced_replicas",
        sa.Column("instance", sa.String(63), nullable=False),
        sa.Column("node", sa.String(63), nullable=False),
        sa.Column("replica", sa.Integer(), nullable=False),
        sa.Column("replaced_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("instance", "node", "replica", name=op.f("pk_replaced_replicas")),
    )


def downgrade() -> None:
    op.drop_table("replaced_replicas")
