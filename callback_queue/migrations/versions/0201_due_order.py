"""the due order as one index that also checks due_at and window_end; expiring leases by index

"list 50 due" and "claim next" walk the claimable rows in the queue's order and stop after
the page: with due_at and window_end in the index (after id, so the order is unchanged) the
rows that are not due yet, or planned into a window that is not open, are skipped inside
the index instead of being fetched from the table one by one. The lease sweep (run by every
claim) and the list's "lease ran out" branch find expired claims through a small index on
lease_until over the rows being dialed, instead of reading every row in state dialing.

Revision ID: 0201
Revises: 0200, 0002 (it needs window_end, from the planning branch)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0201"
#: a merge point of the users branch (whose claim-order index this replaces) and the planning branch (window_end);
#: not depends_on: a dependency would stay a head of the scripts while the database no longer lists it
down_revision = ("0200", "0002")
branch_labels = None
depends_on = None

_CLAIMABLE = sa.text("state IN ('pending', 'scheduled', 'retry_wait')")
_DIALING = sa.text("state = 'dialing'")
_ORDER = [sa.text("priority DESC"), sa.text("failures DESC"), "triggered_at", "id"]


def upgrade() -> None:
    op.create_index("ix_callbacks_due_order", "callbacks", [*_ORDER, "due_at", "window_end"],
                    sqlite_where=_CLAIMABLE, postgresql_where=_CLAIMABLE)
    op.drop_index("ix_callbacks_claim_order", table_name="callbacks")
    op.create_index("ix_callbacks_lease_until", "callbacks", ["lease_until"],
                    sqlite_where=_DIALING, postgresql_where=_DIALING)


def downgrade() -> None:
    op.drop_index("ix_callbacks_lease_until", table_name="callbacks")
    op.create_index("ix_callbacks_claim_order", "callbacks", _ORDER,
                    sqlite_where=_CLAIMABLE, postgresql_where=_CLAIMABLE)
    op.drop_index("ix_callbacks_due_order", table_name="callbacks")
