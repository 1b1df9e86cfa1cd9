"""fewer index entries per plan write: dial_ref indexed only where set, no index on window_start

PostgreSQL cannot make the planner's UPDATE a HOT update (it changes state and due_at, which
indexes hold), so every planned row gets a new entry in every index of callbacks that does not
exclude it by its predicate. Two of them bought nothing for that cost:
- ix_callbacks_dial_ref: only a call being placed has a dial_ref; lookups are by equality, which
  a partial index WHERE dial_ref IS NOT NULL serves on both dialects. Rows without one (all
  planned rows) no longer get an entry.
- ix_callbacks_window_start: no query looks up or ranges over window_start (the report's load
  per window groups every open callback: a scan either way).
bench/plan.py (100,000 open callbacks, PostgreSQL): 8 -> 6 index entries per planned row.

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

_SET = sa.text("dial_ref IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_callbacks_window_start", table_name="callbacks")
    op.drop_index("ix_callbacks_dial_ref", table_name="callbacks")
    op.create_index("ix_callbacks_dial_ref", "callbacks", ["dial_ref"], sqlite_where=_SET, postgresql_where=_SET)


def downgrade() -> None:
    op.drop_index("ix_callbacks_dial_ref", table_name="callbacks")
    op.create_index("ix_callbacks_dial_ref", "callbacks", ["dial_ref"])
    op.create_index("ix_callbacks_window_start", "callbacks", ["window_start"])
