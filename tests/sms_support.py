"""Helpers for the SMS / rating / Twilio tests (not fixtures: plain functions)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from callback_queue import schema as t
from callback_queue.callbacks import State
from callback_queue.ingest import _ev
from callback_queue.store import Store
from daemon.settings import Settings
from sms.outbox import OutboxConfig, SmsOutbox
from sms.senders.base import Route, Router
from sms.templates import Composer

AUTH_TOKEN = "test-auth-token"
ACCOUNT = "AC" + "0" * 32


def add_callback(store: Store, now: datetime, number: str, *, state: State = State.UNREACHABLE,
                 kind: str = "recall", request_id: str | None = None, dial_attempts: int = 3) -> int:
    cb = t.callbacks
    closed = state not in (State.PENDING, State.SCHEDULED, State.DIALING, State.RETRY_WAIT)
    with store.write() as conn:
        cid = conn.execute(cb.insert().values(
            kind=kind, number=number, state=state.value, failures=3, episode_start=now - timedelta(hours=2),
            triggered_at=now - timedelta(hours=1), last_failed_at=now - timedelta(hours=1), due_at=now,
            dial_attempts=dial_attempts, created_at=now, updated_at=now, request_id=request_id,
            closed_at=now if closed else None, outcome="no-answer" if dial_attempts else None,
            close_reason="3 calls without reaching the citizen" if state is State.UNREACHABLE else None,
        ).returning(cb.c.id)).scalar_one()
        conn.execute(t.callback_events.insert(), [_ev(cid, now, "test", "closed", State.DIALING, state, {})])
    return int(cid)


def callback_state(store: Store, cid: int) -> str:
    with store.read() as conn:
        return str(conn.execute(sa.select(t.callbacks.c.state).where(t.callbacks.c.id == cid)).scalar())


def events(store: Store, cid: int) -> list[Any]:
    ev = t.callback_events
    with store.read() as conn:
        return conn.execute(sa.select(ev).where(ev.c.callback_id == cid).order_by(ev.c.id)).all()


def sms_rows(store: Store, cid: int | None = None) -> list[Any]:
    m = t.sms_messages
    q = sa.select(m).order_by(m.c.id)
    if cid is not None:
        q = q.where(m.c.callback_id == cid)
    with store.read() as conn:
        return conn.execute(q).all()


def outbox(store: Store, clock: Any, senders: dict[str, Any], *, routes: list[Route] | None = None,
           link_base: str = "https://cb.example.gov.cn", **config: Any) -> SmsOutbox:
    routes = routes or [Route("", next(iter(senders)))]
    return SmsOutbox(store, clock, Router(routes, senders), Composer(), OutboxConfig(link_base=link_base, **config))


def settings_for(tmp: Path, store_url: str, **sections: Any) -> Settings:
    data: dict[str, Any] = {"daemon": {"state_dir": str(tmp)}, "store": {"url": store_url}}
    data.update(sections)
    # tests run at any hour: no SMS quiet hours unless a test asks for them
    data["sms"] = {"quiet_hours": [], **data.get("sms", {})}
    return Settings.model_validate(data)


def write_config(tmp: Path, store_url: str, extra: str = "") -> Path:
    cfg = tmp / "callbackd.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{tmp}"\n\n[store]\nurl = "{store_url}"\n{extra}', encoding="utf-8")
    return cfg
