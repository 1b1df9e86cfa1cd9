"""Ratings from the evaluation page: one per link, into the callback's history; the callback is `evaluated`."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from callback_queue import schema as t
from callback_queue.callbacks import State
from callback_queue.clock import Clock
from callback_queue.ingest import _ev
from callback_queue.store import Store

from .tokens import Link, LinkState, find_link

RESOLVED = ("resolved", "partly", "not")
SATISFACTION = ("satisfied", "basic", "unsatisfied")
MAX_COMMENT = 500
#: a rating moves these callbacks to `evaluated` (an open one only gets the history entry)
_EVALUABLE = (State.UNREACHABLE.value, State.SMS_SENT.value, State.SMS_DELIVERED.value, State.SMS_FAILED.value,
              State.REACHED.value, State.EXPIRED.value)


class Outcome(enum.StrEnum):
    SAVED = "saved"
    USED = "used"
    EXPIRED = "expired"
    UNKNOWN = "unknown"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class Rating:
    resolved: str
    satisfaction: str
    comment: str | None = None
    lang: str = "zh-CN"

    def problems(self) -> list[str]:
        out = []
        if self.resolved not in RESOLVED:
            out.append("resolved")
        if self.satisfaction not in SATISFACTION:
            out.append("satisfaction")
        if self.comment and len(self.comment) > MAX_COMMENT:
            out.append("comment")
        return out


class Ratings:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    def look(self, token: str) -> tuple[LinkState, Link | None]:
        with self.store.read() as conn:
            link = find_link(conn, token)
        if link is None:
            return LinkState.UNKNOWN, None
        return link.state(self.clock.now()), link

    def submit(self, token: str, rating: Rating) -> tuple[Outcome, int | None]:
        if rating.problems():
            return Outcome.INVALID, None
        now = self.clock.now()
        cb = t.callbacks
        with self.store.write() as conn:
            link = find_link(conn, token)
            if link is None:
                return Outcome.UNKNOWN, None
            state = link.state(now)
            if state is LinkState.USED:
                return Outcome.USED, link.callback_id
            if state is LinkState.EXPIRED:
                return Outcome.EXPIRED, link.callback_id
            # one rating per link: the conditional update is the lock, the unique link_id the guarantee
            if not conn.execute(sa.update(t.eval_links).where(t.eval_links.c.id == link.id,
                                                             t.eval_links.c.used_at.is_(None))
                                .values(used_at=now)).rowcount:
                return Outcome.USED, link.callback_id
            comment = (rating.comment or "").strip() or None
            conn.execute(t.evaluations.insert().values(
                callback_id=link.callback_id, link_id=link.id, resolved=rating.resolved,
                satisfaction=rating.satisfaction, comment=comment, lang=rating.lang, created_at=now))
            cur = conn.execute(sa.select(cb.c.state).where(cb.c.id == link.callback_id)).scalar()
            moved = cur in _EVALUABLE and conn.execute(
                sa.update(cb).where(cb.c.id == link.callback_id, cb.c.state == cur)
                .values(state=State.EVALUATED.value, updated_at=now)).rowcount > 0
            detail: dict[str, Any] = {"resolved": rating.resolved, "satisfaction": rating.satisfaction,
                                      "lang": rating.lang, "link_id": link.id}
            if comment:
                detail["comment"] = comment
            conn.execute(t.callback_events.insert(), [_ev(link.callback_id, now, "citizen", "evaluated",
                                                          cur if moved else None,
                                                          State.EVALUATED if moved else None, detail)])
        return Outcome.SAVED, link.callback_id
