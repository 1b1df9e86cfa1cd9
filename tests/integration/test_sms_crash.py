"""No SMS twice (invariant 5): a crash between "intent stored" and "provider id stored", then a restart,
leaves exactly one message in the provider's view. Twilio's side is a stateful fake HTTP client (Prism is
stateless; the list call's shape is checked against Prism in test_twilio_prism.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import ROOT
from sms_support import ACCOUNT, AUTH_TOKEN, add_callback, callback_state, events, outbox, sms_rows
from twilio.rest import Client

from callback_queue.clock import FakeClock
from callback_queue.store import Store
from sms.senders.base import OutgoingSms, SendResult
from sms.senders.console import ConsoleSender
from sms.senders.twilio import TwilioSender
from sms.testing import FakeTwilioHttpClient

CITIZEN = "+15558675310"


class Crash(BaseException):
    """The process dies here (nothing after it runs, no except clause catches it)."""


class CrashAround:
    def __init__(self, inner: Any, *, before: bool) -> None:
        self.inner, self.before, self.name = inner, before, inner.name

    def send(self, msg: OutgoingSms) -> SendResult:
        if self.before:
            raise Crash("after the intent was stored, before the provider was called")
        self.inner.send(msg)
        raise Crash("after the provider accepted, before its id was stored")

    def find_sent(self, msg: OutgoingSms) -> SendResult | None:
        return self.inner.find_sent(msg)


def _twilio(fake: FakeTwilioHttpClient) -> TwilioSender:
    return TwilioSender(Client(ACCOUNT, AUTH_TOKEN, http_client=fake), from_number="+15017122661")


@pytest.mark.parametrize("before", [False, True], ids=["after-provider-call", "before-provider-call"])
def test_crash_between_intent_and_provider_id(store: Store, clock: FakeClock, before: bool) -> None:
    fake = FakeTwilioHttpClient(now=clock.now)       # the provider: outlives our process
    cid = add_callback(store, clock.now(), CITIZEN)
    with pytest.raises(Crash):
        outbox(store, clock, {"twilio": CrashAround(_twilio(fake), before=before)}).tick()
    [row] = sms_rows(store, cid)
    assert row.state == "sending" and row.provider_id is None       # the intent, no provider id
    assert len(fake.sent_to(CITIZEN)) == (0 if before else 1)

    # restart: a new store connection and a new worker
    store2 = Store(store.url)
    try:
        box = outbox(store2, clock, {"twilio": _twilio(fake)}, send_lease=timedelta(minutes=5))
        box.tick()                                   # the lease of the dead worker has not run out yet
        assert len(fake.sent_to(CITIZEN)) == (0 if before else 1)
        clock.advance(timedelta(minutes=6))
        stats = box.tick()
        [msg] = fake.sent_to(CITIZEN)                # exactly one SMS in the provider's view
        [row] = sms_rows(store2, cid)
        assert row.state == "sent" and row.provider_id == msg["sid"]
        assert callback_state(store2, cid) == "sms_sent"
        if before:
            assert (stats.reconciled, stats.sent) == (0, 1)
            assert "sms_reconciled" in [e.event for e in events(store2, cid)]
        else:
            assert (stats.reconciled, stats.sent) == (1, 0)
            assert json.loads(events(store2, cid)[-1].detail)["reconciled"] is True
        lists = [r for r in fake.requests if r[0] == "GET"]
        assert lists and lists[0][2]["To"] == CITIZEN and lists[0][2]["PageSize"] == 20
        assert "DateSent>" in lists[0][2]
        for _ in range(3):
            clock.advance(timedelta(hours=1))
            box.tick()
        assert len(fake.sent_to(CITIZEN)) == 1
    finally:
        store2.dispose()


class TimeoutAfterCreate(FakeTwilioHttpClient):
    """The provider takes the message, but the answer never arrives (read timeout)."""

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        resp = super().request(method, url, *args, **kwargs)
        if method == "POST" and len(self.messages) == 1:
            raise requests.exceptions.ReadTimeout("read timed out")
        return resp


def test_timeout_is_reconciled_not_resent(store: Store, clock: FakeClock) -> None:
    fake = TimeoutAfterCreate(now=clock.now)
    box = outbox(store, clock, {"twilio": _twilio(fake)})
    cid = add_callback(store, clock.now(), CITIZEN)
    box.tick()
    assert sms_rows(store, cid)[0].state == "unknown"
    box.tick()
    assert len(fake.sent_to(CITIZEN)) == 1
    assert sms_rows(store, cid)[0].state == "sent"


def test_process_killed_after_send_console(store_url: str, tmp_path: Path) -> None:
    """A real process death (os._exit) right after the console sender wrote the message."""
    out = tmp_path / "sms.jsonl"
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT / 'tests')!r})
        from datetime import UTC, datetime
        from callback_queue.clock import FakeClock
        from callback_queue.store import Store
        from sms.senders.console import ConsoleSender
        from sms_support import add_callback, outbox
        clock = FakeClock(datetime(2026, 11, 27, 10, 0, tzinfo=UTC))
        store = Store({store_url!r})
        add_callback(store, clock.now(), {CITIZEN!r})
        console = ConsoleSender({str(out)!r})
        class Die:
            name = "console"
            def send(self, msg):
                console.send(msg)
                os._exit(137)
            def find_sent(self, msg):
                return console.find_sent(msg)
        outbox(store, clock, {{"console": Die()}}).tick()
    """)
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ}, capture_output=True, timeout=60)
    assert proc.returncode == 137, proc.stderr.decode()
    console = ConsoleSender(out)
    assert len(console.messages()) == 1
    store = Store(store_url)
    try:
        clock = FakeClock(FakeClock().now().replace(year=2026, month=11, day=27, hour=10, minute=10))
        [row] = sms_rows(store)
        assert row.state == "sending"
        stats = outbox(store, clock, {"console": console}).tick()
        assert stats.reconciled == 1 and stats.sent == 0
        assert len(console.messages()) == 1
        assert sms_rows(store)[0].state == "sent"
    finally:
        store.dispose()
