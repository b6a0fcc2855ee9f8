"""Nodes carry why their agent did not answer the last observation (the distributed mode's command path).

Plain ``ALTER TABLE`` both ways, on SQLite too: a batch migration copies ``nodes`` and drops the original, and
that drop cascades to the replica rows.

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
    op.add_column("nodes", sa.Column("last_error", sa.Text()))


def downgrade() -> None:
    # Not a batch (copy-and-rename) on SQLite: dropping the old ``nodes`` table would cascade to every replica
    # row (foreign keys are on). SQLite has dropped columns in place since 3.35.
    op.execute("ALTER TABLE nodes DROP COLUMN last_error")
