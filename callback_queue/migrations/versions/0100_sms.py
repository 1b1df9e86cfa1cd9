"""SMS fallback: outbound messages, evaluation links, evaluations, do-not-contact list

Revision ID: 0100
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0100"
down_revision = "0001"
branch_labels = ("sms",)
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "do_not_contact",
        sa.Column("number", sa.String(length=20), nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("number", name=op.f("pk_do_not_contact")),
    )
    op.create_table(
        "eval_links",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("callback_id", _ID, nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("used_at", _TS, nullable=True),
        sa.ForeignKeyConstraint(["callback_id"], ["callbacks.id"], name=op.f("fk_eval_links_callback_id_callbacks"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_links")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_eval_links_token_hash")),
    )
    op.create_index(op.f("ix_eval_links_callback_id"), "eval_links", ["callback_id"], unique=False)
    op.create_table(
        "sms_messages",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("callback_id", _ID, nullable=False),
        sa.Column("number", sa.String(length=20), nullable=False),
        sa.Column("sender", sa.String(length=16), nullable=False),
        sa.Column("lang", sa.String(length=8), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("params", sa.Text(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("provider_id", sa.String(length=64), nullable=True),
        sa.Column("provider_status", sa.String(length=24), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("tries", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_try_at", _TS, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("sent_at", _TS, nullable=True),
        sa.Column("updated_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(["callback_id"], ["callbacks.id"],
                                name=op.f("fk_sms_messages_callback_id_callbacks"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sms_messages")),
        sa.UniqueConstraint("callback_id", name=op.f("uq_sms_messages_callback_id")),
    )
    op.create_index(op.f("ix_sms_messages_provider_id"), "sms_messages", ["provider_id"], unique=False)
    op.create_index(op.f("ix_sms_messages_state_next_try_at"), "sms_messages", ["state", "next_try_at"],
                    unique=False)
    op.create_table(
        "evaluations",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("callback_id", _ID, nullable=False),
        sa.Column("link_id", _ID, nullable=False),
        sa.Column("resolved", sa.String(length=16), nullable=False),
        sa.Column("satisfaction", sa.String(length=16), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("lang", sa.String(length=8), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(["callback_id"], ["callbacks.id"],
                                name=op.f("fk_evaluations_callback_id_callbacks"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["link_id"], ["eval_links.id"], name=op.f("fk_evaluations_link_id_eval_links"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
        sa.UniqueConstraint("link_id", name=op.f("uq_evaluations_link_id")),
    )
    op.create_index(op.f("ix_evaluations_callback_id"), "evaluations", ["callback_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_evaluations_callback_id"), table_name="evaluations")
    op.drop_table("evaluations")
    op.drop_index(op.f("ix_sms_messages_state_next_try_at"), table_name="sms_messages")
    op.drop_index(op.f("ix_sms_messages_provider_id"), table_name="sms_messages")
    op.drop_table("sms_messages")
    op.drop_index(op.f("ix_eval_links_callback_id"), table_name="eval_links")
    op.drop_table("eval_links")
    op.drop_table("do_not_contact")
