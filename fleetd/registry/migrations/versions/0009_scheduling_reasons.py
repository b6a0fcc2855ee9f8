"""Scheduling records keep why the last placement failed, so a plan made during the cooldown still names it.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scheduling_state") as batch:
        batch.add_column(sa.Column("reasons", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scheduling_state") as batch:
        batch.drop_column("reasons")
