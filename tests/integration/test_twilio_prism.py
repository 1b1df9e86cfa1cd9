"""Twilio SMS and Calls against Prism serving Twilio's own OpenAPI spec (a derived test copy that can
answer 429/500/503). Prism checks every request we send against the spec (422 when it does not fit)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sms_support import ACCOUNT, AUTH_TOKEN, add_callback, callback_state, events, outbox, sms_rows
from support.prism import prism
from twilio.rest import Client

from callback_queue import schema as t
from callback_queue.callbacks import State
from callback_queue.clock import FakeClock
from callback_queue.dialing import DialQueue, DialRequest
from callback_queue.queue import CallbackQueue
from callback_queue.retry import DialOutcome
from callback_queue.store import Store
from daemon.dialers.twilio import TwilioDialer
from sms.senders.base import OutgoingSms
from sms.senders.twilio import TwilioSender
from sms.twilio_http import RedirectingTwilioHttpClient

FROM = "+15017122661"
CITIZEN = "+15558675310"


@pytest.fixture(scope="module")
def prism_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with prism(tmp_path_factory.mktemp("prism")) as url:
        yield url


class PreferSequence(RedirectingTwilioHttpClient):
    """Sends `Prefer: <next item>` on the next requests (e.g. code=429 then code=503), then nothing."""

    def __init__(self, base_url: str, prefers: list[str] | None = None) -> None:
        super().__init__(base_url)
        self.prefers = list(prefers or [])
        self.statuses: list[int] = []

    def request(self, *args: Any, **kwargs: Any) -> Any:
        self.extra_headers.pop("Prefer", None)
        if self.prefers:
            self.extra_headers["Prefer"] = self.prefers.pop(0)
        resp = super().request(*args, **kwargs)
        self.statuses.append(resp.status_code)
        return resp


def _sender(http: Any, **kw: Any) -> TwilioSender:
    return TwilioSender(Client(ACCOUNT, AUTH_TOKEN, http_client=http), **({"from_number": FROM} | kw))


def test_sms_is_sent_with_the_right_fields(prism_url: str, store: Store, clock: FakeClock) -> None:
    http = PreferSequence(prism_url)
    box = outbox(store, clock, {"twilio": _sender(http)},
                 status_callback="https://cb.example.gov.cn/twilio/sms-status")
    cid = add_callback(store, clock.now(), CITIZEN)
    assert box.tick().sent == 1
    sent = http._test_only_last_request
    assert sent.method == "POST" and sent.url.endswith(f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json")
    assert sent.data["To"] == CITIZEN and sent.data["From"] == FROM
    assert "https://cb.example.gov.cn/r/" in sent.data["Body"] and "12345" in sent.data["Body"]
    assert sent.data["StatusCallback"] == "https://cb.example.gov.cn/twilio/sms-status"
    assert http.statuses == [201]
    [row] = sms_rows(store, cid)
    assert row.state == "sent" and row.provider_id.startswith("SM") and row.provider_status == "queued"
    assert callback_state(store, cid) == "sms_sent"


def test_429_and_503_are_retried_with_backoff_then_succeed(prism_url: str, store: Store, clock: FakeClock) -> None:
    http = PreferSequence(prism_url, ["code=429", "code=503"])
    box = outbox(store, clock, {"twilio": _sender(http)}, backoff=timedelta(seconds=20))
    cid = add_callback(store, clock.now(), CITIZEN)
    assert box.tick().retried == 1
    [row] = sms_rows(store, cid)
    assert row.state == "pending" and "429/20429" in row.error and "Too Many Requests" in row.error
    clock.advance(20)
    assert box.tick().retried == 1
    assert "503/20503" in sms_rows(store, cid)[0].error
    box.tick()
    assert http.statuses == [429, 503]           # the second retry is not due yet
    clock.advance(40)
    assert box.tick().sent == 1
    assert http.statuses == [429, 503, 201]
    [row] = sms_rows(store, cid)
    assert (row.state, row.tries, row.error) == ("sent", 3, None)
    assert callback_state(store, cid) == "sms_sent"


def test_a_validation_failure_ends_with_a_clear_reason(prism_url: str, store: Store, clock: FakeClock) -> None:
    http = PreferSequence(prism_url)
    box = outbox(store, clock, {"twilio": _sender(http, from_number=None, messaging_service_sid="MG-not-a-sid")})
    cid = add_callback(store, clock.now(), CITIZEN)
    assert box.tick().failed == 1
    assert http.statuses == [422]
    [row] = sms_rows(store, cid)
    assert row.state == "failed"
    assert row.error.startswith("Twilio 422/422: Unable to create record")
    assert "MessagingServiceSid" in row.error            # Prism's own words about what is wrong
    assert callback_state(store, cid) == "sms_failed"
    assert "MessagingServiceSid" in events(store, cid)[-1].detail
    clock.advance(3600)
    box.tick()
    assert http.statuses == [422]                         # never retried


def test_reconciliation_lists_messages_to_the_number_since_the_intent(prism_url: str, clock: FakeClock) -> None:
    http = PreferSequence(prism_url)
    sender = _sender(http)
    msg = OutgoingSms(ref=7, to=CITIZEN, body="x /r/AbCdEfGhIjKlMnOpQrSt", token="AbCdEfGhIjKlMnOpQrSt",
                      created_at=clock.now())
    assert sender.find_sent(msg) is None                  # Prism's example messages are not ours
    req = http._test_only_last_request
    assert req.method == "GET" and req.url.endswith("/Messages.json")   # one page, not the whole list
    assert req.params["To"] == CITIZEN and req.params["PageSize"] == 20
    assert req.params["DateSent>"] == (clock.now() - timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert http.statuses == [200]                         # the query fits the spec


def _dialing(store: Store, clock: FakeClock, ref: str) -> int:
    cid = add_callback(store, clock.now(), CITIZEN, state=State.DIALING, dial_attempts=0)
    with store.write() as conn:
        conn.execute(sa.update(t.callbacks).where(t.callbacks.c.id == cid).values(
            dialer="twilio", dial_ref=ref, dial_started_at=clock.now(), lease_until=clock.now() + timedelta(hours=1)))
    return cid


@pytest.mark.parametrize("mode", ["twiml", "url"])
def test_a_call_is_created_with_twiml_or_url_and_status_callback(prism_url: str, store: Store, clock: FakeClock,
                                                                  mode: str) -> None:
    http = PreferSequence(prism_url)
    dq = DialQueue(CallbackQueue(store, clock))
    dialer = TwilioDialer(Client(ACCOUNT, AUTH_TOKEN, http_client=http), dq, from_number=FROM,
                          status_url="https://cb.example.gov.cn/twilio/call-status",
                          agent_number="+8697100000" if mode == "twiml" else None,
                          twiml_url="https://cb.example.gov.cn/twiml/agent" if mode == "url" else None,
                          machine_detection=True, ring_timeout=25)
    cid = _dialing(store, clock, "cbd-1-abc")
    dialer.place(DialRequest(cid, CITIZEN, "cbd-1-abc", 1))
    assert dialer.free_slots() == 1                       # the call holds a slot...
    sent = http._test_only_last_request
    assert sent.url.endswith(f"/Accounts/{ACCOUNT}/Calls.json") and http.statuses == [201]
    assert sent.data["To"] == CITIZEN and sent.data["From"] == FROM and sent.data["Timeout"] == 25
    assert sent.data["StatusCallback"] == "https://cb.example.gov.cn/twilio/call-status?ref=cbd-1-abc"
    assert sent.data["StatusCallbackMethod"] == "POST"
    assert sent.data["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    assert sent.data["MachineDetection"] == "Enable"
    if mode == "twiml":
        assert sent.data["Twiml"] == ('<Response><Dial timeout="30" callerId="+15017122661">'
                                      "<Number>+8697100000</Number></Dial></Response>")
        assert "Url" not in sent.data
    else:
        assert sent.data["Url"] == "https://cb.example.gov.cn/twiml/agent" and "Twiml" not in sent.data
    # the CallSid replaced our local ref; reconciliation fetches it (Prism's example call is completed)
    with store.read() as conn:
        ref = conn.execute(sa.select(t.callbacks.c.dial_ref).where(t.callbacks.c.id == cid)).scalar()
    assert ref is not None and ref.startswith("CA")
    # Prism's example call is "completed" with answered_by=machine_start: with AMD on, a voicemail
    assert dialer.status(ref, clock.now()) is DialOutcome.NO_ANSWER
    assert http._test_only_last_request.url.endswith(f"/Calls/{ref}.json")
    dialer.amd = False
    assert dialer.status(ref, clock.now()) is DialOutcome.REACHED
    assert dialer.free_slots() == 2                       # ...until it is known to have ended (no webhook needed)


def test_call_reconcile_by_listing_when_the_sid_was_never_stored(prism_url: str, store: Store,
                                                                  clock: FakeClock) -> None:
    http = PreferSequence(prism_url)
    dialer = TwilioDialer(Client(ACCOUNT, AUTH_TOKEN, http_client=http), DialQueue(CallbackQueue(store, clock)),
                          from_number=FROM, status_url="https://cb.example.gov.cn/twilio/call-status",
                          agent_number="+8697100000")
    _dialing(store, clock, "cbd-2-def")
    assert dialer.status("cbd-2-def", clock.now()) is DialOutcome.REACHED
    req = http._test_only_last_request
    assert req.method == "GET" and req.url.endswith("/Calls.json")
    assert req.params["To"] == CITIZEN and req.params["PageSize"] == 2 and "StartTime>" in req.params
    assert http.statuses == [200]
