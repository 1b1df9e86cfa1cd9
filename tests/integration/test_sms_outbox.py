"""The SMS fallback worker on SQLite and PostgreSQL: one SMS per unreachable callback, retries, failures,
delivery reports, do-not-contact, ratings."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from sms_support import add_callback, callback_state, events, outbox, sms_rows

from callback_queue import schema as t
from callback_queue.callbacks import State
from callback_queue.clock import FakeClock
from callback_queue.store import Store
from sms.contacts import DoNotContact
from sms.delivery import record_status
from sms.errors import PermanentSendError, TransientSendError
from sms.outbox import token_in
from sms.ratings import Outcome, Rating, Ratings
from sms.senders.console import ConsoleSender
from sms.testing import ScriptedSender
from sms.tokens import hash_token

N1, N2 = "+8613800138001", "+8613800138002"


def test_unreachable_callback_gets_one_sms_with_a_hashed_link(store: Store, clock: FakeClock, tmp_path: Path) -> None:
    console = ConsoleSender(tmp_path / "out.jsonl")
    box = outbox(store, clock, {"console": console})
    cid = add_callback(store, clock.now(), N1)
    open_cid = add_callback(store, clock.now(), N2, state=State.RETRY_WAIT, dial_attempts=1)
    stats = box.tick()
    assert (stats.queued, stats.sent) == (1, 1)
    [line] = console.messages()
    assert line["to"] == N1 and "https://cb.example.gov.cn/r/" in str(line["body"])
    token = token_in(str(line["body"]))
    assert len(token) == 20
    assert callback_state(store, cid) == "sms_sent"
    assert callback_state(store, open_cid) == "retry_wait"          # not configured to send after one failure
    with store.read() as conn:
        link = conn.execute(sa.select(t.eval_links).where(t.eval_links.c.callback_id == cid)).one()
    assert link.token_hash == hash_token(token)
    assert link.expires_at == clock.now() + timedelta(days=7)
    [row] = sms_rows(store, cid)
    assert row.state == "sent" and row.provider_id == f"console-{row.id}"
    assert token not in row.body and token not in (row.params or "")   # the raw token is not kept
    assert [e.event for e in events(store, cid)][-2:] == ["sms_queued", "sms_sent"]
    sent = events(store, cid)[-1]
    assert (sent.from_state, sent.to_state) == ("unreachable", "sms_sent")
    # later ticks send nothing more
    clock.advance(3600)
    assert box.tick().sent == 0
    assert len(console.messages()) == 1


def test_followup_uses_its_template_and_request_id(store: Store, clock: FakeClock) -> None:
    fake = ScriptedSender()
    box = outbox(store, clock, {"fake": fake})
    add_callback(store, clock.now(), N1, kind="followup", request_id="XN-2026-42")
    box.tick()
    [msg] = fake.sent
    assert "XN-2026-42" in msg.body and "已办结" in msg.body and msg.kind == "followup"
    assert msg.params["request_id"] == "XN-2026-42"


def test_after_first_failure_sends_early_and_the_end_state_follows(store: Store, clock: FakeClock) -> None:
    fake = ScriptedSender()
    box = outbox(store, clock, {"fake": fake}, after_first_failure=True)
    cid = add_callback(store, clock.now(), N1, state=State.RETRY_WAIT, dial_attempts=1)
    box.tick()
    assert len(fake.sent) == 1 and callback_state(store, cid) == "retry_wait"
    with store.write() as conn:   # the retries run out later
        conn.execute(sa.update(t.callbacks).where(t.callbacks.c.id == cid).values(state="unreachable"))
    box.tick()
    assert len(fake.sent) == 1                     # no second SMS
    assert callback_state(store, cid) == "sms_sent"


def test_transient_errors_back_off_then_succeed(store: Store, clock: FakeClock) -> None:
    fake = ScriptedSender(script=[TransientSendError("Twilio 429/20429: Too Many Requests"),
                                  TransientSendError("Twilio 503/20503: Service Unavailable"), None])
    box = outbox(store, clock, {"fake": fake}, backoff=timedelta(seconds=30))
    cid = add_callback(store, clock.now(), N1)
    assert box.tick().retried == 1
    [row] = sms_rows(store, cid)
    assert row.state == "pending" and row.next_try_at == clock.now() + timedelta(seconds=30)
    assert box.tick().sent == 0                   # not due yet: nothing is sent
    clock.advance(30)
    assert box.tick().retried == 1
    [row] = sms_rows(store, cid)
    assert row.next_try_at == clock.now() + timedelta(seconds=60)   # doubled
    clock.advance(60)
    assert box.tick().sent == 1
    [row] = sms_rows(store, cid)
    assert (row.state, row.tries) == ("sent", 3) and fake.calls == 3
    assert [e.event for e in events(store, cid)].count("sms_retry") == 2


def test_permanent_error_ends_with_the_providers_reason(store: Store, clock: FakeClock) -> None:
    fake = ScriptedSender(script=[PermanentSendError("Twilio 400/21211: The 'To' number is not a valid phone "
                                                     "number.")])
    box = outbox(store, clock, {"fake": fake})
    cid = add_callback(store, clock.now(), N1)
    assert box.tick().failed == 1
    assert callback_state(store, cid) == "sms_failed"
    [row] = sms_rows(store, cid)
    assert row.state == "failed" and "21211" in row.error
    last = events(store, cid)[-1]
    assert last.event == "sms_failed" and "21211" in json.loads(last.detail)["reason"]
    clock.advance(3600)
    box.tick()
    assert fake.calls == 1


def test_too_many_transient_errors_give_up(store: Store, clock: FakeClock) -> None:
    fake = ScriptedSender(script=[TransientSendError("HTTP 503")] * 5)
    box = outbox(store, clock, {"fake": fake}, max_tries=3, backoff=timedelta(seconds=1))
    cid = add_callback(store, clock.now(), N1)
    for _ in range(5):
        box.tick()
        clock.advance(3600)
    assert fake.calls == 3
    [row] = sms_rows(store, cid)
    assert row.state == "failed" and row.error.startswith("gave up after 3 tries")


def test_delivery_reports_move_the_callback_and_repeat_harmlessly(store: Store, clock: FakeClock) -> None:
    fake = ScriptedSender()
    box = outbox(store, clock, {"fake": fake})
    cid, cid2 = add_callback(store, clock.now(), N1), add_callback(store, clock.now(), N2)
    box.tick()
    pid = {r.callback_id: r.provider_id for r in sms_rows(store)}
    assert record_status(store, clock, pid[cid], "sent") is True
    assert record_status(store, clock, pid[cid], "delivered") is True
    assert record_status(store, clock, pid[cid], "delivered") is False      # a repeat
    assert record_status(store, clock, pid[cid], "queued") is True           # late, recorded, no regression
    assert callback_state(store, cid) == "sms_delivered"
    assert sms_rows(store, cid)[0].provider_status == "delivered"
    assert record_status(store, clock, pid[cid2], "undelivered", error_code="30003") is True
    assert callback_state(store, cid2) == "sms_failed"
    assert "30003" in sms_rows(store, cid2)[0].error
    assert record_status(store, clock, "SMunknown", "delivered") is None
    statuses = [json.loads(e.detail)["status"] for e in events(store, cid) if e.event == "sms_status"]
    assert statuses == ["sent", "delivered", "queued"]


def test_do_not_contact_blocks_sms_and_cancels_callbacks(store: Store, clock: FakeClock) -> None:
    fake = ScriptedSender()
    box = outbox(store, clock, {"fake": fake})
    dnc = DoNotContact(store, clock)
    unreachable = add_callback(store, clock.now(), N1)
    open_one = add_callback(store, clock.now(), N2, state=State.PENDING, dial_attempts=0)
    assert dnc.add(N1, "sms-reply", "退订") == (True, [])
    assert dnc.add(N2, "operator") == (True, [open_one])
    assert dnc.add(N2, "operator") == (False, [])
    assert callback_state(store, open_one) == "cancelled"
    box.tick()
    assert fake.sent == []
    [row] = sms_rows(store, unreachable)
    assert (row.state, row.error) == ("skipped", "do-not-contact")
    assert dnc.remove(N1) and not dnc.contains(N1) and dnc.contains(N2)


def test_ratings_one_per_link_and_expiry(store: Store, clock: FakeClock) -> None:
    fake = ScriptedSender()
    box = outbox(store, clock, {"fake": fake}, link_ttl=timedelta(days=7))
    cid, cid2 = add_callback(store, clock.now(), N1), add_callback(store, clock.now(), N2)
    box.tick()
    tokens = {m.to: m.token for m in fake.sent}
    ratings = Ratings(store, clock)
    assert ratings.submit(tokens[N1], Rating("maybe", "satisfied")) == (Outcome.INVALID, None)
    assert ratings.submit(tokens[N1], Rating("partly", "basic", "  快一点就好  ", "zh-CN")) == (Outcome.SAVED, cid)
    assert ratings.submit(tokens[N1], Rating("resolved", "satisfied")) == (Outcome.USED, cid)
    assert callback_state(store, cid) == "evaluated"
    last = events(store, cid)[-1]
    assert (last.event, last.actor, last.to_state) == ("evaluated", "citizen", "evaluated")
    assert json.loads(last.detail)["comment"] == "快一点就好"
    assert ratings.submit("x" * 20, Rating("resolved", "satisfied"))[0] is Outcome.UNKNOWN
    clock.advance(timedelta(days=7))
    assert ratings.submit(tokens[N2], Rating("resolved", "satisfied")) == (Outcome.EXPIRED, cid2)
    assert callback_state(store, cid2) == "sms_sent"
    with store.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.evaluations)).scalar() == 1
