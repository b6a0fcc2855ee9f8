"""Replicas carry a person's restart request (``fleetd replica restart``) until a restart carries it out.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("replicas") as batch:
        batch.add_column(sa.Column("restart_requested_ms", sa.BigInteger()))


def downgrade() -> None:
    with op.batch_alter_table("replicas") as batch:
        batch.drop_column("restart_requested_ms")
