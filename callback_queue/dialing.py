"""The dialer port, and the queue operations an automatic dialer uses.

A dial is recorded before it is placed: the claim sets `dialer`, `dial_ref`
(an id the dialer chooses itself: an AMI ActionID/ChannelId; for Twilio a
local reference, the CallSid added when known) and `dial_started_at`, and
commits; only then is the call placed. After a crash, a callback found
"dialing" with a ref is reconciled with the dialer (`Dialer.status`), never
blindly dialed again (DESIGN invariant 4).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa

from . import schema as t
from .callbacks import Callback, State
from .ingest import _ev
from .queue import ORDER, CallbackQueue, _order_key, _pre_claim_state
from .retry import DialOutcome

cb = t.callbacks


@dataclass(frozen=True, slots=True)
class DialRequest:
    callback_id: int
    number: str             # E.164
    dial_ref: str           # unique per call; the dialer uses it to match events to this call
    attempt: int            # 1 for the first call
    kind: str = "recall"    # recall | followup


@dataclass(frozen=True, slots=True)
class DialResult:
    """How a placed call ended, as the dialer reports it."""

    dial_ref: str
    outcome: DialOutcome
    detail: dict[str, Any]


OutcomeSink = Callable[[DialResult], None]


class Dialer(Protocol):
    """An automatic dialer (AMI Originate, Twilio Calls). Outcomes arrive through `on_result`."""

    kind: str

    def start(self, on_result: OutcomeSink) -> None:
        """Connect; from now on every finished call is reported through on_result."""

    def stop(self) -> None: ...

    def free_slots(self) -> int:
        """How many calls may start now: free agents, concurrent-call cap, link up."""

    def place(self, request: DialRequest) -> None:
        """Place the call; raise DialError if it could not even be sent (the outcome is then 'failed')."""

    def status(self, dial_ref: str, started_at: datetime) -> DialOutcome | None:
        """After a restart: how a call we may have placed ended; None if still in progress.
        Raise DialError if the dialer cannot tell (link down)."""


class DialQueue:
    """CallbackQueue operations for automatic dialing."""

    def __init__(self, queue: CallbackQueue) -> None:
        self.queue = queue
        self.store = queue.store
        self.clock = queue.clock

    def claim_for_dial(self, dialer: str, worker: str, count: int, *, lease: timedelta,
                       window_end: datetime | None = None) -> list[DialRequest]:
        """Claim up to `count` due callbacks and record the dial before it is placed."""
        if count <= 0:
            return []
        now = self.clock.now()
        spacing_ok = now - self.queue.retry.min_spacing
        with self.store.write() as conn:
            pick = (
                sa.select(cb.c.id, cb.c.state)
                .where(self.queue.due_clause(now),
                       sa.or_(cb.c.last_dial_at.is_(None), cb.c.last_dial_at <= spacing_ok))
                .order_by(*ORDER).limit(count)
            )
            if conn.dialect.name == "postgresql":
                pick = pick.with_for_update(skip_locked=True)
            # the state each is claimed from, for its event: the rows are locked (FOR UPDATE on PostgreSQL;
            # SQLite's write transaction holds the lock), so it is the state the UPDATE changes
            was = {r.id: r.state for r in conn.execute(pick)}
            out: list[DialRequest] = []
            rows = []
            for cid in was:
                ref = f"cbd-{cid}-{uuid.uuid4().hex[:12]}"
                row = conn.execute(
                    sa.update(cb).where(cb.c.id == cid, self.queue.due_clause(now))
                    .values(state=State.DIALING.value, claimed_by=worker, lease_until=now + lease, dialer=dialer,
                            dial_ref=ref, dial_started_at=now, updated_at=now)
                    .returning(*cb.c)
                ).first()
                if row is not None:
                    rows.append(Callback.from_row(row))
            for c in sorted(rows, key=_order_key):
                out.append(DialRequest(c.id, c.number, c.dial_ref or "", c.dial_attempts + 1, c.kind))
                conn.execute(t.callback_events.insert(), [_ev(
                    c.id, now, worker, "dialing", was[c.id], State.DIALING,
                    {"dialer": dialer, "dial_ref": c.dial_ref, "attempt": c.dial_attempts + 1})])
        return out

    def record(self, result: DialResult, actor: str) -> Callback | None:
        """Apply a finished call's outcome; a result for a dial that is no longer current is ignored."""
        with self.store.write() as conn:
            row = conn.execute(sa.select(cb).where(cb.c.dial_ref == result.dial_ref)).first()
            if row is None:
                return None
            cur = Callback.from_row(row)
            if cur.state is not State.DIALING:
                return None
            return self.queue.apply_outcome(conn, cur, actor, result.outcome,
                                            {"dial_ref": result.dial_ref, **result.detail})

    def in_flight(self, dialer: str) -> list[Callback]:
        with self.store.read() as conn:
            return [Callback.from_row(r) for r in conn.execute(
                sa.select(cb).where(cb.c.state == State.DIALING.value, cb.c.dialer == dialer))]

    def set_ref(self, callback_id: int, old_ref: str, new_ref: str) -> None:
        """Replace a local dial ref with the provider's id once known (Twilio CallSid)."""
        with self.store.write() as conn:
            conn.execute(sa.update(cb).where(cb.c.id == callback_id, cb.c.dial_ref == old_ref)
                         .values(dial_ref=new_ref))

    def give_back(self, callback_id: int, dial_ref: str, actor: str, why: str) -> None:
        """A claimed dial was never placed (no free agent after all, shutting down): back to the queue."""
        now = self.clock.now()
        with self.store.write() as conn:
            row = conn.execute(sa.select(cb).where(cb.c.id == callback_id, cb.c.dial_ref == dial_ref,
                                                   cb.c.state == State.DIALING.value)).first()
            if row is None:
                return
            cur = Callback.from_row(row)
            back = _pre_claim_state(cur)
            conn.execute(sa.update(cb).where(cb.c.id == callback_id).values(
                state=back.value, claimed_by=None, lease_until=None, dialer=None, dial_ref=None,
                dial_started_at=None, updated_at=now))
            conn.execute(t.callback_events.insert(), [_ev(callback_id, now, actor, "released", State.DIALING, back,
                                                          {"reason": why, "dial_ref": dial_ref})])
