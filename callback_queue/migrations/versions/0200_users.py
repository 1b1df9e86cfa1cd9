"""users, API tokens and console sessions; time indexes for reports and metrics

Revision ID: 0200
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0200"
down_revision = "0001"
branch_labels = ("users",)
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("name", name=op.f("uq_users_name")),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_api_tokens_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )
    op.create_index(op.f("ix_api_tokens_user_id"), "api_tokens", ["user_id"])
    op.create_table(
        "user_sessions",
        sa.Column("session_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_user_sessions_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("session_hash", name=op.f("pk_user_sessions")),
    )
    op.create_index(op.f("ix_user_sessions_user_id"), "user_sessions", ["user_id"])
    op.create_index("ix_attempts_started_ts", "attempts", ["started_ts"])
    op.create_index("ix_callback_events_at", "callback_events", ["at"])
    op.create_index("ix_callbacks_triggered_at", "callbacks", ["triggered_at"])
    claimable = sa.text("state IN ('pending', 'scheduled', 'retry_wait')")
    op.create_index("ix_callbacks_claim_order", "callbacks",
                    [sa.text("priority DESC"), sa.text("failures DESC"), "triggered_at", "id"],
                    sqlite_where=claimable, postgresql_where=claimable)


def downgrade() -> None:
    op.drop_index("ix_callbacks_claim_order", table_name="callbacks")
    op.drop_index("ix_callbacks_triggered_at", table_name="callbacks")
    op.drop_index("ix_callback_events_at", table_name="callback_events")
    op.drop_index("ix_attempts_started_ts", table_name="attempts")
    op.drop_table("user_sessions")
    op.drop_table("api_tokens")
    op.drop_table("users")
