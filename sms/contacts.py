"""The do-not-contact list: numbers that replied STOP / 退订 (or were added by an operator).

A listed number gets no SMS and no callback: adding it cancels its open callbacks and skips its
queued messages; the detector opens callbacks for it already cancelled, and claims pass it over.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from callback_queue import schema as t
from callback_queue.callbacks import OPEN_STATES, State
from callback_queue.clock import Clock
from callback_queue.ingest import _ev, _insert_ignore
from callback_queue.store import Store

#: replies that mean "stop messaging me" (compared after trimming, case-folded, punctuation removed)
OPTOUT_WORDS = frozenset({"stop", "stopall", "unsubscribe", "cancel", "end", "quit", "td", "t", "退订", "退訂",
                          "取消订阅", "取消"})
_PUNCT = re.compile(r"[\s\.,!?;:'\"，。！？；：、【】()（）]+")
_OPEN = tuple(s.value for s in OPEN_STATES)


def is_optout(body: str | None) -> bool:
    if not body:
        return False
    text = _PUNCT.sub("", body).casefold()
    return text in OPTOUT_WORDS or "退订" in text or "退訂" in text


@dataclass(frozen=True, slots=True)
class Entry:
    number: str
    source: str
    reason: str | None
    created_at: datetime


def is_listed(conn: Connection, number: str) -> bool:
    dnc = t.do_not_contact
    return conn.execute(sa.select(dnc.c.number).where(dnc.c.number == number)).first() is not None


class DoNotContact:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    def add(self, number: str, source: str, reason: str | None = None, actor: str = "sms") -> tuple[bool, list[int]]:
        """List the number; returns (newly listed, ids of the open callbacks this cancelled)."""
        now = self.clock.now()
        cb = t.callbacks
        with self.store.write() as conn:
            added = conn.execute(_insert_ignore(conn, t.do_not_contact).values(
                number=number, source=source, reason=reason, created_at=now)
                .returning(t.do_not_contact.c.number)).first() is not None
            cancelled = []
            for row in conn.execute(sa.select(cb.c.id, cb.c.state).where(cb.c.number == number,
                                                                         cb.c.state.in_(_OPEN))).all():
                n = conn.execute(sa.update(cb).where(cb.c.id == row.id, cb.c.state.in_(_OPEN)).values(
                    state=State.CANCELLED.value, outcome="do-not-contact", closed_at=now, claimed_by=None,
                    lease_until=None, close_reason="number is on the do-not-contact list", updated_at=now)).rowcount
                if n:
                    cancelled.append(row.id)
                    conn.execute(t.callback_events.insert(), [_ev(row.id, now, actor, "cancelled", row.state,
                                                                  State.CANCELLED,
                                                                  {"reason": "do-not-contact", "source": source})])
            sms = t.sms_messages
            conn.execute(sa.update(sms).where(sms.c.number == number, sms.c.state == "pending").values(
                state="skipped", error="do-not-contact", updated_at=now))
        return added, cancelled

    def remove(self, number: str) -> bool:
        with self.store.write() as conn:
            return conn.execute(sa.delete(t.do_not_contact).where(t.do_not_contact.c.number == number)).rowcount > 0

    def contains(self, number: str) -> bool:
        with self.store.read() as conn:
            return is_listed(conn, number)

    def list(self) -> list[Entry]:
        dnc = t.do_not_contact
        with self.store.read() as conn:
            return [Entry(r.number, r.source, r.reason, r.created_at)
                    for r in conn.execute(sa.select(dnc).order_by(dnc.c.created_at, dnc.c.number))]
