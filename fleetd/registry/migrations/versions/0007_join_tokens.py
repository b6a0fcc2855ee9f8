"""Admission (architecture.md §3): join tokens, kept as SHA-256 hashes with expiry and remaining uses, and the
hash of the credential each node receives when it registers.

``nodes`` gains its column by plain ``ALTER TABLE`` both ways, on SQLite too: a batch migration copies
``nodes`` and drops the original, and that drop cascades to the replica rows.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "join_tokens",
        sa.Column("id", sa.String(16), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=False),
        sa.Column("uses_left", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(255)),
        sa.CheckConstraint("uses_left >= 0", name=op.f("ck_join_tokens_uses_left_not_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_join_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_join_tokens_token_hash")),
    )
    op.add_column("nodes", sa.Column("credential_hash", sa.String(128)))


def downgrade() -> None:
    # Not a batch (copy-and-rename) on SQLite: dropping the old ``nodes`` table would cascade to every replica
    # row (foreign keys are on). SQLite has dropped columns in place since 3.35.
    op.execute("ALTER TABLE nodes DROP COLUMN credential_hash")
    op.drop_table("join_tokens")
