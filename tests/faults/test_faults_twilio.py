"""Twilio answering 429/503 bursts: the real daemon (a subprocess) sends SMS and places calls through an
HTTP front (tests/support/faultproxy.py) that refuses the first requests, then forwards to Prism
(Twilio's OpenAPI mock).

The SMS outbox retries and sends each message exactly once, honouring Retry-After; the Twilio dialer
gives a throttled call back to the queue without counting an attempt, holds new calls until
Retry-After has passed, and places each call once. The log holds one line per refused request.
The last tests drive the sender and the dialer in-process, request by request.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import parse_qs

import faultenv
import pytest
import sqlalchemy as sa
import structlog
from faultenv import LogReader, events, loud
from sms_support import ACCOUNT, AUTH_TOKEN, add_callback
from support.crash import Proc, wait_for
from support.faultproxy import HttpFaultFront
from twilio.rest import Client

from callback_queue.callbacks import State
from callback_queue.clock import FakeClock
from callback_queue.dialing import DialQueue
from callback_queue.queue import CallbackQueue
from callback_queue.store import Store
from daemon.dialers.twilio import THROTTLE_PAUSE, TwilioDialer
from daemon.dispatch import Dispatcher
from sms.errors import TransientSendError
from sms.senders.base import OutgoingSms
from sms.senders.twilio import TwilioSender
from sms.twilio_http import RedirectingTwilioHttpClient

prism_port = faultenv.prism_port  # the fixture (this folder has no conftest.py: see faultenv.py)
RETRY_AFTER = 2.0
SMS_TO = ["+8613800138001", "+8613800138002", "+8613800138003"]
DIAL_TO = ["+8613900139001", "+8613900139002", "+8613900139003"]


def config(tmp: Path, url: str, api: str) -> Path:
    cfg = tmp / "callbackd.toml"
    cfg.write_text(f"""
[daemon]
state_dir = "{tmp / 'state'}"
timezone = "Asia/Shanghai"
log_format = "json"
sweep_interval = "1s"

[store]
url = "{url}"

[http]
enabled = false

[rating]
base_url = "https://cb.example.gov.cn"

[sms]
routes = [{{ prefix = "", sender = "twilio" }}]
quiet_hours = []   # runs at any hour
poll_interval = "0.3s"
backoff = "0.5s"
max_tries = 6

[dialer]
kind = "twilio"
tick = "0.2s"
lease = "1s"

[twilio]
account_sid = "{ACCOUNT}"
auth_token = "{AUTH_TOKEN}"
from_number = "+15017122661"
agent_number = "+8697100000"
api_base_url = "{api}"
max_concurrent_calls = 1
""")
    return cfg


def rows(url: str, sql: str) -> list[sa.Row]:
    eng = sa.create_engine(url)
    try:
        with eng.connect() as c:
            return list(c.execute(sa.text(sql)))
    finally:
        eng.dispose()


def test_429_and_503_bursts_each_message_and_call_goes_out_once(tmp_path: Path, prism_port: int) -> None:
    url = f"sqlite:///{tmp_path / 'twilio.db'}"
    store = Store(url)
    store.upgrade()
    now = datetime.now(UTC)
    sms_ids = [add_callback(store, now, n) for n in SMS_TO]                       # unreachable: an SMS is owed
    dial_ids = [add_callback(store, now, n, state=State.PENDING, dial_attempts=0) for n in DIAL_TO]  # due
    store.dispose()
    with HttpFaultFront("127.0.0.1", prism_port) as front:
        # the bursts are queued before the daemon starts, so its very first requests meet them
        front.fail_next(2, 429, retry_after=RETRY_AFTER, path="/Messages.json")
        front.fail_next(2, 503, path="/Messages.json")
        front.fail_next(1, 429, retry_after=RETRY_AFTER, path="/Calls.json")
        front.fail_next(1, 503, path="/Calls.json")
        proc = Proc(config(tmp_path, url, front.url), "run", tag="daemon")
        log = LogReader(proc.err)
        try:
            assert proc.wait_started(), proc.stderr()[-3000:]

            def done() -> bool:
                sms = rows(url, "SELECT state FROM sms_messages")
                cbs = rows(url, f"SELECT state FROM callbacks WHERE id IN ({','.join(map(str, dial_ids))})")
                return (len(sms) == 3 and all(r.state == "sent" for r in sms)
                        and all(r.state == "reached" for r in cbs))

            assert wait_for(done, 60, interval=0.3), (rows(url, "SELECT id, state, tries, error FROM sms_messages"),
                                                      rows(url, "SELECT id, state, dial_attempts FROM callbacks"),
                                                      proc.stderr()[-3000:])
            assert front.pending_faults() == 0
            assert proc.p.poll() is None
        finally:
            rc = proc.stop()
    assert rc == 0, proc.stderr()[-3000:]
    records, other = log.since()
    assert other == [], other

    # SMS: every refused POST was retried, every message created exactly once
    posts = [s for s in front.seen if s.method == "POST" and s.path.endswith("/Messages.json")]
    assert Counter(s.status for s in posts) == {429: 2, 503: 2, 201: 3}
    created = Counter(parse_qs(s.body.decode())["To"][0] for s in posts if s.status == 201)
    assert created == {n: 1 for n in SMS_TO}
    sms = rows(url, "SELECT callback_id, state, tries, provider_id, error FROM sms_messages ORDER BY callback_id")
    assert [r.callback_id for r in sms] == sms_ids
    assert all(r.state == "sent" and r.provider_id.startswith("SM") and r.error is None for r in sms)
    assert sum(r.tries for r in sms) == len(posts)           # one try per request: nothing sent twice
    # Retry-After was honoured: a message refused with 429 was not tried again sooner
    by_to: dict[str, list] = {}
    for s in posts:
        by_to.setdefault(parse_qs(s.body.decode())["To"][0], []).append(s)
    for tries in by_to.values():
        for a, b in zip(tries, tries[1:]):
            if a.status == 429:
                assert b.at - a.at >= RETRY_AFTER - 0.05, (a, b)
    # one warning per refused request, naming the provider's reason
    retry_lines = events(records, "sms.retry")
    assert len(retry_lines) == 4
    assert sorted(r["reason"].split(":")[0] for r in retry_lines) == ["Twilio 429/20429"] * 2 + ["Twilio 503/20503"] * 2
    assert all(r["retry_in"] >= RETRY_AFTER for r in retry_lines if "429" in r["reason"])

    # calls: each placed once; a throttled request counted no attempt
    calls = [s for s in front.seen if s.method == "POST" and s.path.endswith("/Calls.json")]
    assert Counter(s.status for s in calls) == {429: 1, 503: 1, 201: 3}
    assert Counter(parse_qs(s.body.decode())["To"][0] for s in calls if s.status == 201) == {n: 1 for n in DIAL_TO}
    cbs = rows(url, f"SELECT id, state, dial_attempts FROM callbacks WHERE id IN ({','.join(map(str, dial_ids))})")
    assert [(r.state, r.dial_attempts) for r in cbs] == [("reached", 1)] * 3
    released = rows(url, "SELECT detail FROM callback_events WHERE event = 'released'")
    assert len(released) == 2 and all("not placed, back in the queue" in r.detail for r in released)
    after_429 = [b for a, b in zip(calls, calls[1:]) if a.status == 429]
    assert after_429 and after_429[0].at - calls[[c.status for c in calls].index(429)].at >= RETRY_AFTER - 0.05
    not_placed = events(records, "dial.not_placed")
    assert len(not_placed) == 2 and all("Twilio 429" in r["error"] or "Twilio 503" in r["error"] for r in not_placed)

    # nothing else was loud: no job failures, no tracebacks, no SMS given up (this daemon only dials and texts:
    # it has no call log to watch, and says so once)
    assert Counter(e for _, e in loud(records)) == {"sms.retry": 4, "dial.not_placed": 2, "daemon.no_sources": 1}, \
        loud(records)


# -- the same components in-process: what a throttled request does, request by request ---------------
@pytest.mark.parametrize("retry_after", [3, "date"])
def test_the_sms_sender_reads_retry_after_in_seconds_or_as_a_date(prism_port: int, retry_after: object) -> None:
    with HttpFaultFront("127.0.0.1", prism_port) as front:
        value = (format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True) if retry_after == "date"
                 else retry_after)
        front.fail_next(1, 429, retry_after=value)  # type: ignore[arg-type]
        sender = TwilioSender(Client(ACCOUNT, AUTH_TOKEN, http_client=RedirectingTwilioHttpClient(front.url)),
                              from_number="+15017122661")
        msg = OutgoingSms(ref=1, to=SMS_TO[0], body="x")
        with pytest.raises(TransientSendError) as info:
            sender.send(msg)
        wait = info.value.retry_after
        assert wait is not None and (wait == 3 if retry_after == 3 else 25 < wait <= 30)
        assert "429/20429" in str(info.value)
        assert sender.send(msg).provider_id.startswith("SM")   # the next request goes through
        assert front.statuses("/Messages.json") == [429, 201]


def test_a_throttled_dialer_gives_its_claims_back_and_holds_new_calls(prism_port: int, tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'dial.db'}")
    store.upgrade()
    clock = FakeClock(datetime.now(UTC))
    ids = [add_callback(store, clock.now(), n, state=State.PENDING, dial_attempts=0) for n in DIAL_TO[:2]]
    dq = DialQueue(CallbackQueue(store, clock))
    with HttpFaultFront("127.0.0.1", prism_port) as front:
        dialer = TwilioDialer(Client(ACCOUNT, AUTH_TOKEN, http_client=RedirectingTwilioHttpClient(front.url)), dq,
                              from_number="+15017122661", status_url="https://cb.example.gov.cn/twilio/call-status",
                              agent_number="+8697100000", max_concurrent=2)
        dispatcher = Dispatcher(dq, dialer, lease=timedelta(minutes=5))
        front.fail_next(1, 429)                              # no Retry-After: the dialer's own pause
        with structlog.testing.capture_logs() as logs:
            assert dispatcher.tick() == 2                    # two claimed in one tick
        # one request went out (429); the second claim was given back without asking Twilio again
        assert front.statuses("/Calls.json") == [429]
        lines = [e for e in logs if e["event"] == "dial.not_placed"]
        assert len(lines) == 2 and "429" in lines[0]["error"] and "throttling" in lines[1]["error"]
        waits = [float(e["error"].rsplit("resume in ", 1)[1].split()[0]) for e in lines]
        assert waits[0] == THROTTLE_PAUSE and THROTTLE_PAUSE - 1 < waits[1] <= THROTTLE_PAUSE
        cbs = rows(store.url, "SELECT state, dial_attempts, dial_ref, claimed_by FROM callbacks ORDER BY id")
        assert [tuple(r) for r in cbs] == [("pending", 0, None, None)] * 2   # no attempt counted
        released = rows(store.url, "SELECT callback_id FROM callback_events WHERE event = 'released' ORDER BY id")
        assert sorted(r.callback_id for r in released) == ids
        assert dialer.free_slots() == 0 and dispatcher.tick() == 0   # held: nothing claimed, nothing sent
        assert front.statuses("/Calls.json") == [429]
        dialer._paused_until = 0.0                           # (the pause's end, without waiting 5 s)
        assert dispatcher.tick() == 2
        assert front.statuses("/Calls.json") == [429, 201, 201]
        cbs = rows(store.url, "SELECT state, dial_attempts, dial_ref FROM callbacks ORDER BY id")
        assert [(r.state, r.dial_attempts) for r in cbs] == [("dialing", 0)] * 2 and all(
            r.dial_ref.startswith("CA") for r in cbs)
    store.dispose()
