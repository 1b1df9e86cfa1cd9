"""The tables (SQLAlchemy Core). Alembic migrations must produce exactly this."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.types import TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on SQLite too."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):  # type: ignore[no-untyped-def]
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC)

    def process_result_value(self, value, dialect):  # type: ignore[no-untyped-def]
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


OPEN_STATES_SQL = "state IN ('pending', 'scheduled', 'dialing', 'retry_wait')"

# Inbound calls. Times are epoch seconds (UTC): this is the high-volume log table.
attempts = Table(
    "attempts",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("system", String(64), nullable=False),
    Column("call_id", String(128), nullable=False),
    Column("number", String(20)),
    Column("caller", String(80)),
    Column("started_ts", BigInteger, nullable=False),
    Column("ended_ts", BigInteger),
    Column("outcome", String(16), nullable=False),
    Column("reason", String(24), nullable=False),
    Column("wait_seconds", Integer),
    Column("queue", String(80)),
    Column("origin", String(16), nullable=False),
    Column("rank", SmallInteger, nullable=False),
    UniqueConstraint("system", "call_id"),
    Index(None, "number", "started_ts"),
)

callbacks = Table(
    "callbacks",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False, server_default="recall"),
    Column("number", String(20), nullable=False),
    Column("state", String(16), nullable=False),
    Column("priority", Integer, nullable=False, server_default="0"),
    Column("failures", Integer, nullable=False),
    Column("episode_start", UTCDateTime, nullable=False),
    Column("triggered_at", UTCDateTime, nullable=False),
    Column("last_failed_at", UTCDateTime, nullable=False),
    Column("due_at", UTCDateTime, nullable=False),
    Column("dial_attempts", Integer, nullable=False, server_default="0"),
    Column("claimed_by", String(64)),
    Column("lease_until", UTCDateTime),
    Column("outcome", String(24)),
    Column("close_reason", Text),
    Column("closed_at", UTCDateTime),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # planning and dialing (revision 0002)
    Column("sla_due_at", UTCDateTime),            # when the SLA says it must have been called
    Column("sla_breached_at", UTCDateTime),       # when the planner found it cannot make the SLA
    Column("window_start", UTCDateTime),          # the off-peak window it is planned into
    Column("window_end", UTCDateTime),            # (claims happen only while that window is open)
    Column("earliest_at", UTCDateTime),           # not before: the retry policy's time
    Column("dialer", String(16)),                 # who is placing the current call: ami | twilio | operator
    Column("dial_ref", String(128)),              # that call's ActionID / CallSid, for reconciliation
    Column("dial_started_at", UTCDateTime),
    Column("last_dial_at", UTCDateTime),
    Column("outcome_counts", Text),               # JSON {"busy": 2, "no-answer": 1}: per-outcome retries
    Column("request_id", String(64)),             # follow-ups: the closed request being rated
    UniqueConstraint("number", "episode_start"),
    # invariant 2: at most one open callback per number, enforced by the database
    Index(
        "uq_callbacks_open_number",
        "number",
        unique=True,
        sqlite_where=text(OPEN_STATES_SQL),
        postgresql_where=text(OPEN_STATES_SQL),
    ),
    Index(None, "state", "due_at"),
    # (revision 0003) only rows with a call being placed; no index on window_start: every index entry is
    # rewritten for each row the planner writes (bench/plan.py)
    Index(None, "dial_ref", sqlite_where=text("dial_ref IS NOT NULL"), postgresql_where=text("dial_ref IS NOT NULL")),
)

callback_attempts = Table(
    "callback_attempts",
    metadata,
    Column("callback_id", ForeignKey("callbacks.id", ondelete="CASCADE"), primary_key=True),
    Column("attempt_id", ForeignKey("attempts.id", ondelete="CASCADE"), primary_key=True),
)

callback_events = Table(
    "callback_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("callback_id", ForeignKey("callbacks.id", ondelete="CASCADE"), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("event", String(32), nullable=False),
    Column("from_state", String(16)),
    Column("to_state", String(16)),
    Column("detail", Text),
    Index(None, "callback_id", "id"),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("source", String(64), nullable=False),
    Column("position", String(512), nullable=False),
    Column("raw", LargeBinary, nullable=False),
    Column("reason", Text, nullable=False),
    Column("digest", String(64), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
)

source_cursors = Table(
    "source_cursors",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("path", Text),
    Column("device", BigInteger),
    Column("inode", BigInteger),
    Column("offset", BigInteger, nullable=False, server_default="0"),
    Column("head", String(64)),
    Column("state", Text),
    Column("updated_at", UTCDateTime, nullable=False),
)

# -- SMS fallback and evaluations (migration branch "sms", revision 0100) ---------------------

# One SMS per callback (invariant 5): the row is the intent, written before the provider is called;
# provider_id is filled in after. A row found "sending" after a restart is reconciled with the provider.
sms_messages = Table(
    "sms_messages",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("callback_id", ForeignKey("callbacks.id", ondelete="CASCADE"), nullable=False, unique=True),
    Column("number", String(20), nullable=False),
    Column("sender", String(16), nullable=False),           # console | twilio | aliyun
    Column("lang", String(8), nullable=False),
    Column("body", Text, nullable=False),
    Column("params", Text),                                 # JSON template parameters (template providers)
    Column("state", String(16), nullable=False),            # pending | sending | sent | delivered | failed
    Column("provider_id", String(64)),
    Column("provider_status", String(24)),
    Column("error", Text),
    Column("tries", Integer, nullable=False, server_default="0"),
    Column("next_try_at", UTCDateTime),
    Column("created_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime),
    Column("updated_at", UTCDateTime, nullable=False),
    Index(None, "state", "next_try_at"),
    Index(None, "provider_id"),
)

# Evaluation links: only a hash of the token is stored; one rating per link.
eval_links = Table(
    "eval_links",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("callback_id", ForeignKey("callbacks.id", ondelete="CASCADE"), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("used_at", UTCDateTime),
    Index(None, "callback_id"),
)

evaluations = Table(
    "evaluations",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("callback_id", ForeignKey("callbacks.id", ondelete="CASCADE"), nullable=False),
    Column("link_id", ForeignKey("eval_links.id", ondelete="CASCADE"), nullable=False, unique=True),
    Column("resolved", String(16), nullable=False),         # resolved | partly | not
    Column("satisfaction", String(16), nullable=False),     # satisfied | basic | unsatisfied
    Column("comment", Text),
    Column("lang", String(8), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Index(None, "callback_id"),
)

# Numbers that asked not to be contacted (STOP / 退订, or an operator): no SMS, no callback.
do_not_contact = Table(
    "do_not_contact",
    metadata,
    Column("number", String(20), primary_key=True),
    Column("source", String(32), nullable=False),           # sms-reply | operator | import
    Column("reason", Text),
    Column("created_at", UTCDateTime, nullable=False),
)

# -- users, API tokens and console sessions (revision 0200, branch "users") -------------------
# Tokens and session ids are stored only as SHA-256 digests: they are 256-bit random values, so a
# plain digest cannot be reversed and lets a request be matched by an index lookup.
users = Table(
    "users",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("disabled_at", UTCDateTime),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("user_id", ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_used_at", UTCDateTime),
    Column("revoked_at", UTCDateTime),
)

user_sessions = Table(
    "user_sessions",
    metadata,
    Column("session_hash", String(64), primary_key=True),
    Column("user_id", ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
)

# time-range reads for the heatmap, reports and metrics (same revision)
Index("ix_attempts_started_ts", attempts.c.started_ts)
Index("ix_callback_events_at", callback_events.c.at)
Index("ix_callbacks_triggered_at", callbacks.c.triggered_at)
# the claim's order over the claimable rows: "claim next" walks this index instead of sorting
# every due callback (bench/api.py: 89 ms -> 0.04 ms for the bare claim with 20,000 due of 1,000,000)
_CLAIMABLE_SQL = "state IN ('pending', 'scheduled', 'retry_wait')"
# (revision 0201) due_at and window_end follow id, so the order is unchanged and "due now" / "its window is open"
# are checked inside the index: rows not due yet are skipped without reading the table
Index("ix_callbacks_due_order", callbacks.c.priority.desc(), callbacks.c.failures.desc(), callbacks.c.triggered_at,
      callbacks.c.id, callbacks.c.due_at, callbacks.c.window_end,
      sqlite_where=text(_CLAIMABLE_SQL), postgresql_where=text(_CLAIMABLE_SQL))
# claims whose lease ran out (the sweep, run by every claim, and the due list) without reading every dialing row
Index("ix_callbacks_lease_until", callbacks.c.lease_until, sqlite_where=text("state = 'dialing'"),
      postgresql_where=text("state = 'dialing'"))
