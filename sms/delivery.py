"""Delivery reports: a provider's status for a sent message, recorded in the callback's history."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from callback_queue import schema as t
from callback_queue.callbacks import State
from callback_queue.clock import Clock
from callback_queue.ingest import _ev
from callback_queue.store import Store

#: later statuses never get overwritten by an earlier one arriving late
RANK = {"accepted": 1, "scheduled": 1, "queued": 1, "written": 1, "sending": 2, "sent": 3, "delivered": 4,
        "undelivered": 4, "failed": 4, "canceled": 4, "read": 5}
DELIVERED = frozenset({"delivered", "read"})
FAILED = frozenset({"failed", "undelivered", "canceled"})


def record_status(store: Store, clock: Clock, provider_id: str, status: str, *, error_code: str | None = None,
                  actor: str = "twilio", extra: dict[str, Any] | None = None) -> bool | None:
    """Record one status report. Returns None for an unknown message, False for a repeat, True if recorded."""
    sms, cb = t.sms_messages, t.callbacks
    now = clock.now()
    status = status.lower()
    with store.write() as conn:
        row = conn.execute(sa.select(sms).where(sms.c.provider_id == provider_id)).first()
        if row is None:
            return None
        seen = conn.execute(sa.select(t.callback_events.c.detail).where(
            t.callback_events.c.callback_id == row.callback_id, t.callback_events.c.event == "sms_status")).all()
        key = f'"status": "{status}"'
        if any(key in (d.detail or "") for d in seen):
            return False            # Twilio repeats callbacks: each status is recorded once
        values: dict[str, Any] = {"updated_at": now}
        newer = RANK.get(status, 0) >= RANK.get(row.provider_status or "", 0)
        if newer:
            values["provider_status"] = status
            if status in DELIVERED:
                values.update(state="delivered", error=None)
            elif status in FAILED:
                values.update(state="failed", error=f"{status}" + (f" (error {error_code})" if error_code else ""))
        conn.execute(sa.update(sms).where(sms.c.id == row.id).values(**values))
        cur = conn.execute(sa.select(cb.c.state).where(cb.c.id == row.callback_id)).scalar()
        new_state: State | None = None
        if newer and status in DELIVERED and cur in (State.SMS_SENT.value, State.SMS_FAILED.value):
            new_state = State.SMS_DELIVERED
        elif newer and status in FAILED and cur == State.SMS_SENT.value:
            new_state = State.SMS_FAILED
        if new_state is not None:
            conn.execute(sa.update(cb).where(cb.c.id == row.callback_id, cb.c.state == cur)
                         .values(state=new_state.value, updated_at=now))
        detail: dict[str, Any] = {"status": status, "provider_id": provider_id, "sms_id": row.id, **(extra or {})}
        if error_code:
            detail["error_code"] = error_code
        conn.execute(t.callback_events.insert(), [_ev(row.callback_id, now, actor, "sms_status",
                                                      cur if new_state else None, new_state, detail)])
    return True
