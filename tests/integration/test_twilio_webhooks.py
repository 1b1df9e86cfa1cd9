"""Twilio webhooks: X-Twilio-Signature checked (valid accepted; missing, wrong token, tampered -> 403);
message statuses into the history; STOP / 退订 replies onto the do-not-contact list; call statuses into
DialQueue with Twilio's statuses mapped."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sms_support import ACCOUNT, AUTH_TOKEN, add_callback, callback_state, events, outbox, settings_for, sms_rows
from starlette.testclient import TestClient
from twilio.request_validator import RequestValidator

from callback_queue import schema as t
from callback_queue.callbacks import State
from callback_queue.clock import FakeClock
from callback_queue.queue import CallbackQueue
from callback_queue.retry import DialOutcome
from callback_queue.store import Store
from daemon.dialers.twilio import outcome_for
from daemon.http import twilio_hooks
from daemon.http.app import Services, create_app
from sms.contacts import DoNotContact
from sms.testing import ScriptedSender

PUBLIC = "https://cb.example.gov.cn"
CITIZEN = "+8613800138001"


def sign(path: str, params: dict[str, str], token: str = AUTH_TOKEN) -> str:
    return RequestValidator(token).compute_signature(PUBLIC + path, params)


@pytest.fixture
def web(store: Store, clock: FakeClock, tmp_path: Path) -> Iterator[TestClient]:
    settings = settings_for(tmp_path, store.url, http={"public_url": PUBLIC},
                            twilio={"account_sid": ACCOUNT, "auth_token": AUTH_TOKEN})
    services = Services(settings=settings, store=store, clock=clock, queue=CallbackQueue(store, clock))
    with TestClient(create_app(services, providers=[twilio_hooks.routes])) as client:
        yield client


def _status(sid: str, status: str, **extra: str) -> dict[str, str]:
    return {"AccountSid": ACCOUNT, "ApiVersion": "2010-04-01", "MessageSid": sid, "SmsSid": sid,
            "MessageStatus": status, "SmsStatus": status, "From": "+15017122661", "To": CITIZEN, **extra}


def _sent(store: Store, clock: FakeClock) -> tuple[int, str]:
    cid = add_callback(store, clock.now(), CITIZEN)
    outbox(store, clock, {"fake": ScriptedSender()}).tick()
    return cid, sms_rows(store, cid)[0].provider_id


def test_signed_status_is_accepted_and_recorded(web: TestClient, store: Store, clock: FakeClock) -> None:
    cid, sid = _sent(store, clock)
    form = _status(sid, "delivered")
    r = web.post("/twilio/sms-status", data=form, headers={"X-Twilio-Signature": sign("/twilio/sms-status", form)})
    assert r.status_code == 204
    assert callback_state(store, cid) == "sms_delivered"
    last = events(store, cid)[-1]
    assert (last.event, last.actor, last.to_state) == ("sms_status", "twilio", "sms_delivered")
    # failed with an error code, for another message
    cid2 = add_callback(store, clock.now(), "+8613800138009")
    outbox(store, clock, {"fake": ScriptedSender()}).tick()
    form = _status(sms_rows(store, cid2)[0].provider_id, "undelivered", ErrorCode="30003")
    r = web.post("/twilio/sms-status", data=form, headers={"X-Twilio-Signature": sign("/twilio/sms-status", form)})
    assert r.status_code == 204 and callback_state(store, cid2) == "sms_failed"
    assert json.loads(events(store, cid2)[-1].detail)["error_code"] == "30003"


@pytest.mark.parametrize("case", ["missing", "wrong-token", "tampered", "other-url"])
def test_bad_signatures_are_refused(web: TestClient, store: Store, clock: FakeClock, case: str) -> None:
    cid, sid = _sent(store, clock)
    form = _status(sid, "delivered")
    headers = {"X-Twilio-Signature": sign("/twilio/sms-status", form)}
    if case == "missing":
        headers = {}
    elif case == "wrong-token":
        headers = {"X-Twilio-Signature": sign("/twilio/sms-status", form, token="another-token")}
    elif case == "tampered":
        form = {**form, "MessageStatus": "failed"}
    else:
        headers = {"X-Twilio-Signature": sign("/twilio/sms-inbound", form)}
    r = web.post("/twilio/sms-status", data=form, headers=headers)
    assert r.status_code == 403
    assert callback_state(store, cid) == "sms_sent"
    assert "sms_status" not in [e.event for e in events(store, cid)]


def test_the_signature_covers_the_query_string(web: TestClient, store: Store, clock: FakeClock) -> None:
    form = {"CallSid": "CA" + "1" * 32, "CallStatus": "ringing"}
    good = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC + "/twilio/call-status?ref=cbd-1-x", form)
    assert web.post("/twilio/call-status?ref=cbd-1-x", data=form,
                    headers={"X-Twilio-Signature": good}).status_code == 204
    assert web.post("/twilio/call-status?ref=cbd-2-y", data=form,
                    headers={"X-Twilio-Signature": good}).status_code == 403


@pytest.mark.parametrize("body", ["STOP", "退订", "td"])
def test_stop_reply_puts_the_number_on_the_list(web: TestClient, store: Store, clock: FakeClock, body: str) -> None:
    open_cb = add_callback(store, clock.now(), CITIZEN, state=State.PENDING, dial_attempts=0)
    form = {"AccountSid": ACCOUNT, "MessageSid": "SM" + "9" * 32, "From": CITIZEN, "To": "+15017122661",
            "Body": body, "NumMedia": "0"}
    r = web.post("/twilio/sms-inbound", data=form, headers={"X-Twilio-Signature": sign("/twilio/sms-inbound", form)})
    assert r.status_code == 200 and r.text.endswith("<Response></Response>")
    assert DoNotContact(store, clock).contains(CITIZEN)
    assert callback_state(store, open_cb) == "cancelled"


def test_other_replies_change_nothing(web: TestClient, store: Store, clock: FakeClock) -> None:
    form = {"From": CITIZEN, "Body": "谢谢，问题已解决"}
    r = web.post("/twilio/sms-inbound", data=form, headers={"X-Twilio-Signature": sign("/twilio/sms-inbound", form)})
    assert r.status_code == 200 and not DoNotContact(store, clock).contains(CITIZEN)
    unsigned = web.post("/twilio/sms-inbound", data={"From": CITIZEN, "Body": "STOP"})
    assert unsigned.status_code == 403 and not DoNotContact(store, clock).contains(CITIZEN)


@pytest.mark.parametrize("status,answered_by,amd,expected", [
    ("completed", None, False, DialOutcome.REACHED),
    ("completed", "machine_end_beep", False, DialOutcome.REACHED),
    ("completed", "machine_end_beep", True, DialOutcome.NO_ANSWER),
    ("completed", "human", True, DialOutcome.REACHED),
    ("busy", None, False, DialOutcome.BUSY),
    ("no-answer", None, False, DialOutcome.NO_ANSWER),
    ("failed", None, False, DialOutcome.FAILED),
    ("canceled", None, False, DialOutcome.FAILED),
    ("ringing", None, False, None),
    ("in-progress", None, False, None),
])
def test_call_status_mapping(status: str, answered_by: str | None, amd: bool, expected: DialOutcome | None) -> None:
    assert outcome_for(status, answered_by, amd=amd) == expected


def _dialing(store: Store, clock: FakeClock, ref: str) -> int:
    cid = add_callback(store, clock.now(), CITIZEN, state=State.DIALING, dial_attempts=0)
    with store.write() as conn:
        conn.execute(sa.update(t.callbacks).where(t.callbacks.c.id == cid).values(
            dialer="twilio", dial_ref=ref, dial_started_at=clock.now(), lease_until=clock.now() + timedelta(hours=1)))
    return cid


def _call_form(sid: str, status: str, **extra: Any) -> dict[str, str]:
    return {"AccountSid": ACCOUNT, "CallSid": sid, "CallStatus": status, "Direction": "outbound-api",
            "From": "+15017122661", "To": CITIZEN, "CallbackSource": "call-progress-events", **extra}


def test_call_status_webhook_records_the_outcome(web: TestClient, store: Store, clock: FakeClock) -> None:
    sid = "CA" + "2" * 32
    cid = _dialing(store, clock, sid)
    ringing = _call_form(sid, "ringing", SequenceNumber="1")
    path = "/twilio/call-status?ref=cbd-1-abc"
    assert web.post(path, data=ringing, headers={"X-Twilio-Signature": sign(path, ringing)}).status_code == 204
    assert callback_state(store, cid) == "dialing"
    busy = _call_form(sid, "busy", SequenceNumber="2")
    assert web.post(path, data=busy, headers={"X-Twilio-Signature": sign(path, busy)}).status_code == 204
    assert callback_state(store, cid) == "retry_wait"
    closed = events(store, cid)[-1]
    assert closed.event == "closed" and json.loads(closed.detail)["outcome"] == "busy"
    assert json.loads(closed.detail)["CallSid"] == sid


def test_call_status_before_the_sid_was_stored_uses_our_ref(web: TestClient, store: Store, clock: FakeClock) -> None:
    cid = _dialing(store, clock, "cbd-7-local")
    form = _call_form("CA" + "3" * 32, "completed", CallDuration="42")
    path = "/twilio/call-status?ref=cbd-7-local"
    assert web.post(path, data=form, headers={"X-Twilio-Signature": sign(path, form)}).status_code == 204
    assert callback_state(store, cid) == "reached"
