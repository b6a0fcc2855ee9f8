"""Nodes carry why their agent did not answer the last observation (the distributed mode's command path).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("last_error", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("last_error")
