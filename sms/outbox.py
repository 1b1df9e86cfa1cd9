"""The SMS fallback worker (an outbox): callbacks that ended unreachable get one SMS with a rating link.

Invariant 5, no SMS twice: per callback one `sms_messages` row (unique). The row is written
("pending") before anything is sent; a worker marks it "sending" and commits *before* calling the
provider, and stores the provider id after. A row left "sending" (the worker died) or "unknown" (a
timeout) is reconciled with the provider (`Sender.find_sent`) before it may be sent again.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from callback_queue import schema as t
from callback_queue.callbacks import Callback, State
from callback_queue.clock import Clock
from callback_queue.ingest import _ev
from callback_queue.store import Store

from .contacts import is_listed
from .errors import PermanentSendError, ReconcileError, SendOutcomeUnknown, TemplateError, TransientSendError
from .quiet import QuietHours
from .senders.base import OutgoingSms, Router, SendResult
from .templates import Composer
from .tokens import LINK_PATH, create_link, link_url

sms_t, cb = t.sms_messages, t.callbacks
_TOKEN = re.compile(re.escape(LINK_PATH) + r"([A-Za-z0-9_-]{16,64})")
MAX_BACKOFF = timedelta(hours=1)


@dataclass(frozen=True)
class OutboxConfig:
    link_base: str
    link_ttl: timedelta = timedelta(days=7)
    after_first_failure: bool = False
    max_tries: int = 6
    backoff: timedelta = timedelta(seconds=30)
    send_lease: timedelta = timedelta(minutes=5)
    status_callback: str | None = None
    batch: int = 50
    #: no SMS goes out inside these hours: a message waits (queued, with a not-before time) until they end
    quiet: QuietHours | None = None


@dataclass
class TickStats:
    queued: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    skipped: int = 0
    reconciled: int = 0
    settled: int = 0
    held: int = 0               # due, but held back by quiet hours
    errors: list[str] = field(default_factory=list)


def token_in(text: str) -> str:
    m = _TOKEN.search(text or "")
    return m.group(1) if m else ""


def mask_token(text: str | None) -> str | None:
    """After the provider has the message, the raw token is not kept: only its hash (eval_links) is."""
    if not text:
        return text
    return _TOKEN.sub(lambda m: LINK_PATH + m.group(1)[:4] + "…", text)


class SmsOutbox:
    name = "sms"

    def __init__(self, store: Store, clock: Clock, router: Router, composer: Composer, config: OutboxConfig,
                 *, actor: str = "sms", log: Any = None) -> None:
        self.store = store
        self.clock = clock
        self.router = router
        self.composer = composer
        self.config = config
        self.actor = actor
        self.log = log

    # -- one tick -------------------------------------------------------------------------
    def tick(self) -> TickStats:
        stats = TickStats()
        self.reconcile(stats)
        self.enqueue(stats)
        self.send_due(stats)
        self.settle(stats)
        return stats

    # -- 1. intents -----------------------------------------------------------------------
    def _eligible(self) -> Any:
        cond = cb.c.state == State.UNREACHABLE.value
        if self.config.after_first_failure:
            cond = sa.or_(cond, sa.and_(cb.c.state == State.RETRY_WAIT.value, cb.c.dial_attempts >= 1))
        return cond

    def enqueue(self, stats: TickStats | None = None) -> int:
        stats = stats or TickStats()
        now = self.clock.now()
        with self.store.write() as conn:
            pick = (sa.select(cb).where(self._eligible(), ~sa.exists().where(sms_t.c.callback_id == cb.c.id))
                    .order_by(cb.c.id).limit(self.config.batch))
            if conn.dialect.name == "postgresql":
                pick = pick.with_for_update(skip_locked=True)
            for row in conn.execute(pick).all():
                self._intent(conn, Callback.from_row(row), now, stats)
        return stats.queued

    def _intent(self, conn: Connection, c: Callback, now: datetime, stats: TickStats) -> None:
        base = {"callback_id": c.id, "number": c.number, "created_at": now, "updated_at": now, "tries": 0}
        route = self.router.route(c.number)
        if is_listed(conn, c.number) or route is None:
            why = "do-not-contact" if route is not None else "no SMS route for this number"
            conn.execute(sms_t.insert().values(**base, sender="-", lang="-", body="", state="skipped", error=why))
            conn.execute(t.callback_events.insert(), [_ev(c.id, now, self.actor, "sms_skipped", None, None,
                                                          {"reason": why})])
            stats.skipped += 1
            return
        token = create_link(conn, c.id, now, self.config.link_ttl)
        lang = route.language or self.composer.default_lang
        try:
            r = self.composer.render(c.kind, lang, link=link_url(self.config.link_base, token),
                                     request_id=c.request_id)
        except TemplateError as exc:
            conn.execute(sms_t.insert().values(**base, sender=route.sender, lang=lang, body="", state="failed",
                                               error=str(exc)))
            self._callback_failed(conn, c.id, now, str(exc))
            stats.failed += 1
            return
        params = json.dumps({"kind": c.kind, **r.params}, ensure_ascii=False)
        not_before = self._quiet_until(now)
        sid = conn.execute(sms_t.insert().values(
            **base, sender=route.sender, lang=r.lang, body=r.body, params=params,
            state="pending", next_try_at=not_before or now).returning(sms_t.c.id)).scalar_one()
        detail = {"sms_id": sid, "sender": route.sender, "lang": r.lang, "kind": c.kind,
                  "segments": r.info.segments, "encoding": r.info.encoding}
        if not_before is not None:
            detail["not_before"] = not_before.isoformat()   # quiet hours: sent when they end
        conn.execute(t.callback_events.insert(), [_ev(c.id, now, self.actor, "sms_queued", None, None, detail)])
        stats.queued += 1

    # -- 2. sending -----------------------------------------------------------------------
    def _quiet_until(self, now: datetime) -> datetime | None:
        return self.config.quiet.until(now) if self.config.quiet is not None else None

    def send_due(self, stats: TickStats | None = None) -> TickStats:
        stats = stats or TickStats()
        now = self.clock.now()
        until = self._quiet_until(now)
        if until is not None:   # quiet hours: what is due waits, queued, until they end
            with self.store.write() as conn:
                stats.held += conn.execute(sa.update(sms_t).where(sms_t.c.state == "pending",
                                                                  sms_t.c.next_try_at <= now)
                                           .values(next_try_at=until)).rowcount
            return stats
        with self.store.read() as conn:
            ids = [r.id for r in conn.execute(
                sa.select(sms_t.c.id).where(sms_t.c.state == "pending", sms_t.c.next_try_at <= now)
                .order_by(sms_t.c.next_try_at, sms_t.c.id).limit(self.config.batch))]
        for sid in ids:
            self.send_one(sid, stats)
        return stats

    def send_one(self, sms_id: int, stats: TickStats) -> None:
        now = self.clock.now()
        # the intent to send *now*, committed before the provider is called
        with self.store.write() as conn:
            row = conn.execute(
                sa.update(sms_t).where(sms_t.c.id == sms_id, sms_t.c.state == "pending")
                .values(state="sending", tries=sms_t.c.tries + 1, updated_at=now).returning(*sms_t.c)).first()
        if row is None:
            return                              # another worker took it
        msg = self._message(row)
        try:
            result = self.router.sender(row.sender).send(msg)
        except TransientSendError as exc:
            self._transient(row, str(exc), exc.retry_after, stats)
        except PermanentSendError as exc:
            self._failed(row.id, str(exc), stats)
        except SendOutcomeUnknown as exc:
            with self.store.write() as conn:
                conn.execute(sa.update(sms_t).where(sms_t.c.id == row.id, sms_t.c.state == "sending")
                             .values(state="unknown", error=str(exc), updated_at=self.clock.now()))
            stats.errors.append(str(exc))
        else:
            self._sent(row.id, result, stats, reconciled=False)

    def _message(self, row: Any) -> OutgoingSms:
        params = json.loads(row.params) if row.params else {}
        return OutgoingSms(ref=row.id, to=row.number, body=row.body, kind=params.get("kind", "recall"),
                           lang=row.lang, params=params, token=token_in(row.body), created_at=row.created_at,
                           status_callback=self.config.status_callback)

    def _transient(self, row: Any, reason: str, retry_after: float | None, stats: TickStats) -> None:
        if row.tries >= self.config.max_tries:
            self._failed(row.id, f"gave up after {row.tries} tries: {reason}", stats)
            return
        now = self.clock.now()
        delay = min(self.config.backoff * (2 ** (row.tries - 1)), MAX_BACKOFF)
        if retry_after:
            delay = max(delay, timedelta(seconds=retry_after))
        with self.store.write() as conn:
            conn.execute(sa.update(sms_t).where(sms_t.c.id == row.id, sms_t.c.state == "sending").values(
                state="pending", next_try_at=now + delay, error=reason, updated_at=now))
            conn.execute(t.callback_events.insert(), [_ev(row.callback_id, now, self.actor, "sms_retry", None, None,
                                                          {"sms_id": row.id, "try": row.tries, "reason": reason,
                                                           "retry_at": (now + delay).isoformat()})])
        stats.retried += 1
        if self.log:  # one line per refused try (a 429/503 burst is as many lines as refused requests)
            self.log.warning("sms.retry", sms_id=row.id, callback_id=row.callback_id, attempt=row.tries,
                             reason=reason, retry_in=round(delay.total_seconds(), 1))

    def _failed(self, sms_id: int, reason: str, stats: TickStats) -> None:
        now = self.clock.now()
        with self.store.write() as conn:
            row = conn.execute(sa.select(sms_t).where(sms_t.c.id == sms_id)).first()
            if row is not None:
                conn.execute(sa.update(sms_t).where(sms_t.c.id == sms_id).values(
                    state="failed", error=reason, next_try_at=None, body=mask_token(row.body),
                    params=mask_token(row.params), updated_at=now))
                self._callback_failed(conn, row.callback_id, now, reason)
        stats.failed += 1
        if self.log:
            self.log.warning("sms.failed", sms_id=sms_id, reason=reason)

    def _callback_failed(self, conn: Connection, callback_id: int, now: datetime, reason: str) -> None:
        moved = conn.execute(sa.update(cb).where(cb.c.id == callback_id, cb.c.state == State.UNREACHABLE.value)
                             .values(state=State.SMS_FAILED.value, updated_at=now)).rowcount
        conn.execute(t.callback_events.insert(), [_ev(
            callback_id, now, self.actor, "sms_failed", State.UNREACHABLE if moved else None,
            State.SMS_FAILED if moved else None, {"reason": reason})])

    def _sent(self, sms_id: int, result: SendResult, stats: TickStats, *, reconciled: bool) -> None:
        now = self.clock.now()
        with self.store.write() as conn:
            row = conn.execute(sa.select(sms_t).where(sms_t.c.id == sms_id)).first()
            if row is None or row.state in ("sent", "delivered"):
                return
            conn.execute(sa.update(sms_t).where(sms_t.c.id == sms_id).values(
                state="sent", provider_id=result.provider_id, provider_status=result.status, sent_at=now,
                error=None, next_try_at=None, body=mask_token(row.body), params=mask_token(row.params),
                updated_at=now))
            moved = conn.execute(sa.update(cb).where(cb.c.id == row.callback_id,
                                                     cb.c.state == State.UNREACHABLE.value)
                                 .values(state=State.SMS_SENT.value, updated_at=now)).rowcount
            detail = {"sms_id": sms_id, "sender": row.sender, "provider_id": result.provider_id,
                      "status": result.status, "tries": row.tries}
            if reconciled:
                detail["reconciled"] = True
            conn.execute(t.callback_events.insert(), [_ev(
                row.callback_id, now, self.actor, "sms_sent", State.UNREACHABLE if moved else None,
                State.SMS_SENT if moved else None, detail)])
        if reconciled:
            stats.reconciled += 1
        else:
            stats.sent += 1
        if self.log:
            self.log.info("sms.sent", sms_id=sms_id, callback_id=row.callback_id, sender=row.sender,
                          provider_id=result.provider_id, reconciled=reconciled)

    # -- 3. reconciliation ----------------------------------------------------------------
    def reconcile(self, stats: TickStats | None = None) -> TickStats:
        """Rows whose outcome is unknown: ask the provider before anything is sent again."""
        stats = stats or TickStats()
        now = self.clock.now()
        stale = now - self.config.send_lease
        with self.store.read() as conn:
            rows = conn.execute(sa.select(sms_t).where(sa.or_(
                sms_t.c.state == "unknown", sa.and_(sms_t.c.state == "sending", sms_t.c.updated_at < stale)))
                .order_by(sms_t.c.id).limit(self.config.batch)).all()
        for row in rows:
            try:
                found = self.router.sender(row.sender).find_sent(self._message(row))
            except ReconcileError as exc:
                stats.errors.append(str(exc))
                if self.log:
                    self.log.warning("sms.reconcile_failed", sms_id=row.id, error=str(exc))
                continue
            if found is not None:
                self._sent(row.id, found, stats, reconciled=True)
                continue
            with self.store.write() as conn:
                n = conn.execute(sa.update(sms_t).where(sms_t.c.id == row.id, sms_t.c.state == row.state,
                                                        sms_t.c.updated_at == row.updated_at)
                                 .values(state="pending", next_try_at=now, updated_at=now)).rowcount
                if n:
                    conn.execute(t.callback_events.insert(), [_ev(
                        row.callback_id, now, self.actor, "sms_reconciled", None, None,
                        {"sms_id": row.id, "found": False, "was": row.state})])
        return stats

    # -- 4. callbacks that became unreachable after their SMS went out --------------------
    def settle(self, stats: TickStats | None = None) -> TickStats:
        stats = stats or TickStats()
        now = self.clock.now()
        target = {"sent": State.SMS_SENT, "delivered": State.SMS_DELIVERED, "failed": State.SMS_FAILED}
        with self.store.write() as conn:
            rows = conn.execute(sa.select(cb.c.id, sms_t.c.state, sms_t.c.id.label("sms_id"))
                                .join(sms_t, sms_t.c.callback_id == cb.c.id)
                                .where(cb.c.state == State.UNREACHABLE.value,
                                       sms_t.c.state.in_(tuple(target)))).all()
            for r in rows:
                new = target[r.state]
                if conn.execute(sa.update(cb).where(cb.c.id == r.id, cb.c.state == State.UNREACHABLE.value)
                                .values(state=new.value, updated_at=now)).rowcount:
                    conn.execute(t.callback_events.insert(), [_ev(r.id, now, self.actor, "sms_earlier",
                                                                  State.UNREACHABLE, new, {"sms_id": r.sms_id})])
                    stats.settled += 1
        return stats
