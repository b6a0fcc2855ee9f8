"""Replicas remember when their state last changed, so the planner can tell how long one has been failed.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: rows written before this revision do not know; the next report of each fills it in.
    with op.batch_alter_table("replicas") as batch:
        batch.add_column(sa.Column("state_since_ms", sa.BigInteger()))


def downgrade() -> None:
    with op.batch_alter_table("replicas") as batch:
        batch.drop_column("state_since_ms")
