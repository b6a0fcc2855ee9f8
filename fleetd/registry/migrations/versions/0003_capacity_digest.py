"""Scheduling hysteresis remembers the placement structure it was computed against.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scheduling_state") as batch:
        batch.add_column(sa.Column("capacity_digest", sa.String(80), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("scheduling_state") as batch:
        batch.drop_column("capacity_digest")
