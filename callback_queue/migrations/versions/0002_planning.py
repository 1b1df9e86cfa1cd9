"""planning and dialing columns on callbacks

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = ("planning",)
depends_on = None

def _columns() -> list[sa.Column]:
    return [
        sa.Column("sla_due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("sla_breached_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("earliest_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("dialer", sa.String(length=16), nullable=True),
        sa.Column("dial_ref", sa.String(length=128), nullable=True),
        sa.Column("dial_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_dial_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome_counts", sa.Text(), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
    ]


def upgrade() -> None:
    with op.batch_alter_table("callbacks") as batch:
        for col in _columns():
            batch.add_column(col)
        batch.create_index("ix_callbacks_dial_ref", ["dial_ref"])
        batch.create_index("ix_callbacks_window_start", ["window_start"])


def downgrade() -> None:
    with op.batch_alter_table("callbacks") as batch:
        batch.drop_index("ix_callbacks_window_start")
        batch.drop_index("ix_callbacks_dial_ref")
        for col in reversed(_columns()):
            batch.drop_column(col.name)
