"""The Twilio call-log source end to end, on SQLite and PostgreSQL: signed inbound webhooks (status,
Enqueue action, Dial action) open and cancel callbacks like Asterisk's sources; unsigned → 403; repeats
and out-of-order arrivals change nothing they should not; bad data → dead letters; the catch-up poll
against Prism serving Twilio's spec."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sms_support import ACCOUNT, AUTH_TOKEN, settings_for
from starlette.testclient import TestClient
from test_twilio_prism import prism_url  # noqa: F401  (the Prism fixture, reused)
from test_twilio_webhooks import PUBLIC, sign
from twilio.rest import Client

from callback_queue import schema as t
from callback_queue.clock import FakeClock
from callback_queue.ingest import Ingestor, load_cursor
from callback_queue.queue import CallbackQueue
from callback_queue.store import Store
from daemon.app import detect_rules
from daemon.http import twilio_hooks
from daemon.http.app import Services, create_app
from daemon.sources.twilio_calls import TwilioCallPoller, reducer_for
from sms.twilio_http import RedirectingTwilioHttpClient

HOTLINE = "+861012345678"
CITIZEN = "+8613800138001"


def sid(n: int) -> str:
    return f"CA{n:032x}"


def _settings(tmp: Path, store: Store, **source: Any) -> Any:
    return settings_for(tmp, store.url, http={"public_url": PUBLIC},
                        twilio={"account_sid": ACCOUNT, "auth_token": AUTH_TOKEN},
                        twilio_source={"enabled": True, "numbers": [HOTLINE], **source})


@pytest.fixture
def services(store: Store, clock: FakeClock, tmp_path: Path) -> Services:
    return Services(settings=_settings(tmp_path, store), store=store, clock=clock, queue=CallbackQueue(store, clock))


@pytest.fixture
def web(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services, providers=[twilio_hooks.routes])) as client:
        yield client


def post(web: TestClient, kind: str, form: dict[str, str], *, signed: bool = True) -> Any:
    path = f"/twilio/inbound/{kind}"
    headers = {"X-Twilio-Signature": sign(path, form)} if signed else {}
    return web.post(path, data=form, headers=headers)


def call(n: int, **extra: str) -> dict[str, str]:
    return {"AccountSid": ACCOUNT, "ApiVersion": "2010-04-01", "CallSid": sid(n), "From": CITIZEN,
            "To": HOTLINE, "Caller": CITIZEN, "Called": HOTLINE, "Direction": "inbound", "ToCountry": "CN", **extra}


def status(n: int, st: str, at: datetime, duration: int = 0) -> dict[str, str]:
    return call(n, CallStatus=st, CallDuration=str(duration), Timestamp=format_datetime(at),
                CallbackSource="call-progress-events", SequenceNumber="2")


def queue(n: int, result: str, waited: int) -> dict[str, str]:
    return call(n, CallStatus="in-progress", QueueResult=result, QueueTime=str(waited), QueueSid="QU" + "5" * 32)


def callbacks(store: Store) -> list[Any]:
    with store.read() as conn:
        return conn.execute(sa.select(t.callbacks).order_by(t.callbacks.c.id)).all()


def attempt(store: Store, n: int) -> Any:
    with store.read() as conn:
        return conn.execute(sa.select(t.attempts).where(t.attempts.c.call_id == sid(n))).one()


def snapshot(store: Store) -> tuple[Any, ...]:
    with store.read() as conn:
        return tuple(list(conn.execute(sa.select(tbl).order_by(*tbl.primary_key.columns)).all())
                     for tbl in (t.attempts, t.callbacks, t.callback_events, t.callback_attempts, t.dead_letters))


def test_three_failures_open_a_callback_and_a_bridged_call_cancels_it(web: TestClient, store: Store,
                                                                      clock: FakeClock) -> None:
    assert post(web, "status", status(1, "no-answer", clock.now())).status_code == 204
    clock.advance(timedelta(minutes=10))
    assert post(web, "status", status(2, "busy", clock.now())).status_code == 204
    clock.advance(timedelta(minutes=10))
    assert callbacks(store) == []
    r = post(web, "queue", queue(3, "hangup", 40))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/xml") and "<Response>" in r.text
    [cb] = callbacks(store)
    assert (cb.number, cb.state, cb.failures, cb.kind) == (CITIZEN, "pending", 3, "recall")
    a3 = attempt(store, 3)
    assert (a3.system, a3.outcome, a3.reason, a3.wait_seconds, a3.origin, a3.rank) == (
        f"twilio:{ACCOUNT}", "failed", "abandon", 40, "twilio", 2)
    assert (attempt(store, 1).reason, attempt(store, 2).reason) == ("no-answer", "busy")
    # call 3's final status comes after the queue result: "completed" after 100 s would pass for
    # answered on its own (rank 1), but the queue said the caller hung up (rank 2)
    clock.advance(timedelta(seconds=60))
    assert post(web, "status", status(3, "completed", clock.now(), 100)).status_code == 204
    a3 = attempt(store, 3)
    assert (a3.outcome, a3.reason, a3.rank, a3.wait_seconds) == ("failed", "abandon", 2, 40)
    assert callbacks(store)[0].state == "pending"
    # Twilio retries, duplicates: every webhook again changes nothing
    before = snapshot(store)
    clock.advance(timedelta(minutes=5))
    for kind, form in [("status", status(1, "no-answer", clock.now() - timedelta(minutes=26))),
                       ("status", status(2, "busy", clock.now() - timedelta(minutes=16))),
                       ("status", status(3, "completed", clock.now() - timedelta(minutes=5), 100))]:
        assert post(web, kind, form).status_code == 204
    assert snapshot(store) == before
    # an hour later the citizen gets through
    clock.advance(timedelta(hours=1))
    assert post(web, "queue", queue(4, "bridged", 12)).status_code == 200
    [cb] = callbacks(store)
    assert (cb.state, cb.outcome) == ("cancelled", "self-resolved") and sid(4) in cb.close_reason
    a4 = attempt(store, 4)
    assert (a4.outcome, a4.reason, a4.rank) == ("connected", "connect", 2)


def test_queue_result_overrides_an_earlier_completed_status(web: TestClient, store: Store, clock: FakeClock) -> None:
    """Out of order: the final status ("completed", long enough to pass for answered) arrives before the
    Enqueue action; the streak then exists only once the queue result is in."""
    for n, st in ((1, "no-answer"), (2, "canceled")):
        assert post(web, "status", status(n, st, clock.now())).status_code == 204
        clock.advance(timedelta(minutes=3))
    assert post(web, "status", status(3, "completed", clock.now(), 150)).status_code == 204
    assert (attempt(store, 3).outcome, attempt(store, 3).rank, attempt(store, 3).origin) == ("connected", 1, "cdr")
    assert callbacks(store) == []
    assert post(web, "queue", queue(3, "leave", 140)).status_code == 200
    a3 = attempt(store, 3)
    assert (a3.outcome, a3.reason, a3.rank, a3.origin) == ("failed", "exitwithkey", 2, "twilio")
    [cb] = callbacks(store)
    assert (cb.state, cb.failures) == ("pending", 3)


def test_dial_action(web: TestClient, store: Store, clock: FakeClock) -> None:
    r = post(web, "dial", call(7, CallStatus="in-progress", DialCallStatus="no-answer", DialCallSid=sid(70)))
    assert r.status_code == 200 and "<Response>" in r.text
    assert (attempt(store, 7).outcome, attempt(store, 7).reason) == ("failed", "no-answer")
    post(web, "dial", call(8, CallStatus="in-progress", DialCallStatus="completed", DialCallDuration="95"))
    assert (attempt(store, 8).outcome, attempt(store, 8).rank) == ("connected", 2)


@pytest.mark.parametrize("kind", ["status", "queue", "dial"])
@pytest.mark.parametrize("case", ["unsigned", "wrong-token", "tampered"])
def test_unsigned_or_forged_is_refused(web: TestClient, store: Store, kind: str, case: str) -> None:
    form = {**status(1, "busy", datetime(2026, 11, 27, 9, 0).astimezone()), "QueueResult": "hangup",
            "DialCallStatus": "busy"}
    headers = {"X-Twilio-Signature": sign(f"/twilio/inbound/{kind}", form,
                                          token="other" if case == "wrong-token" else AUTH_TOKEN)}
    if case == "unsigned":
        headers = {}
    if case == "tampered":
        form = {**form, "From": "+8613900139000"}
    r = web.post(f"/twilio/inbound/{kind}", data=form, headers=headers)
    assert r.status_code == 403
    assert snapshot(store) == ([],) * 5


def test_disabled_source_answers_404(services: Services, store: Store, clock: FakeClock, tmp_path: Path) -> None:
    services.settings = settings_for(tmp_path, store.url, http={"public_url": PUBLIC},
                                     twilio={"account_sid": ACCOUNT, "auth_token": AUTH_TOKEN})
    with TestClient(create_app(services, providers=[twilio_hooks.routes])) as client:
        assert post(client, "status", status(1, "busy", clock.now())).status_code == 404
    assert snapshot(store) == ([],) * 5


def test_bad_form_data_goes_to_dead_letters(web: TestClient, store: Store, clock: FakeClock) -> None:
    bad = [("status", status(1, "exploded", clock.now())),
           ("status", {**status(2, "busy", clock.now()), "CallDuration": "abc"}),
           ("status", {**status(3, "busy", clock.now()), "Timestamp": "yesterday"}),
           ("status", {k: v for k, v in status(4, "busy", clock.now()).items() if k != "CallSid"}),
           ("queue", queue(5, "vanished", 10)),
           ("dial", call(6, DialCallStatus=""))]
    for kind, form in bad:
        r = post(web, kind, form)
        assert r.status_code == (204 if kind == "status" else 200), (kind, r.text)
    with store.read() as conn:
        rows = conn.execute(sa.select(t.dead_letters).order_by(t.dead_letters.c.id)).all()
        assert conn.execute(sa.select(sa.func.count()).select_from(t.attempts)).scalar() == 0
    assert len(rows) == len(bad)
    assert [r.source for r in rows] == [f"twilio:{ACCOUNT}"] * len(bad)
    assert "exploded" in rows[0].reason and "CallDuration" in rows[1].reason and "Timestamp" in rows[2].reason
    assert "CallSid" in rows[3].reason and "QueueResult" in rows[4].reason and "DialCallStatus" in rows[5].reason
    assert rows[0].position == f"webhook:/twilio/inbound/status:{sid(1)}" and b"CallStatus=exploded" in rows[0].raw
    # the same bad webhook again is the same dead letter
    post(web, *bad[0])
    with store.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.dead_letters)).scalar() == len(bad)


def test_catch_up_poll_against_prism(prism_url: str, store: Store, clock: FakeClock,  # noqa: F811
                                     tmp_path: Path) -> None:
    settings = _settings(tmp_path, store, max_calls=2, lookback="24h")
    http = RedirectingTwilioHttpClient(prism_url)
    poller = TwilioCallPoller(settings.twilio_source, Client(ACCOUNT, AUTH_TOKEN, http_client=http), ACCOUNT,
                              Ingestor(store, clock, detect_rules(settings)), reducer_for(settings), clock)
    res = poller.poll()
    sent = http._test_only_last_request
    assert sent.method == "GET" and sent.url.endswith(f"/2010-04-01/Accounts/{ACCOUNT}/Calls.json")
    # first poll: lookback (24 h) plus the overlap (5 min) before "now" (2026-11-27 10:00 UTC)
    assert sent.params["To"] == HOTLINE and sent.params["StartTime>"] == "2026-11-26T09:55:00Z"
    assert int(sent.params["PageSize"]) == 2
    # Prism's static example: an outbound-api call (skipped) and an inbound 'completed' call of 3 s
    assert (res.listed, res.attempts, res.dead_letters) == (2, 1, 0)
    with store.read() as conn:
        [row] = conn.execute(sa.select(t.attempts)).all()
    # 'completed' without a queue/dial result, shorter than answered_min_seconds: an abandon of 3 s, rank 1
    # (the example's end_time says 16:03 but its duration 3 s: start + duration is taken)
    assert (row.system, row.call_id, row.caller, row.number) == (
        "twilio:AC" + "a" * 32, "CA" + "a" * 31 + "0", "+13051416798", "+13051416798")
    assert (row.outcome, row.reason, row.wait_seconds, row.rank, row.origin) == ("failed", "abandon", 3, 1, "cdr")
    assert (row.started_ts, row.ended_ts) == (int(datetime.fromisoformat("2019-10-18T16:02:00+00:00").timestamp()),
                                              int(datetime.fromisoformat("2019-10-18T16:02:03+00:00").timestamp()))
    cur = load_cursor(store, f"twilio:{ACCOUNT}")
    assert cur is not None and cur.state == {"since": int(clock.now().timestamp())}
    # the next poll reads from the cursor (minus the overlap); re-listing the same calls changes nothing
    before = snapshot(store)
    clock.advance(timedelta(minutes=5))
    poller.poll()
    assert http._test_only_last_request.params["StartTime>"] == "2026-11-27T09:55:00Z"
    assert snapshot(store) == before
    # with completed_means_answered the same record is a connected call
    yes = _settings(tmp_path, store, max_calls=2, completed_means_answered=True)
    poller.reducer = reducer_for(yes)
    poller.poll()
    assert attempt_by_sid(store, "CA" + "a" * 31 + "0").outcome == "connected"


def attempt_by_sid(store: Store, call_id: str) -> Any:
    with store.read() as conn:
        return conn.execute(sa.select(t.attempts).where(t.attempts.c.call_id == call_id)).one()


def test_daemon_component_polls_on_the_leader_only(prism_url: str, store: Store, clock: FakeClock,  # noqa: F811
                                                   tmp_path: Path) -> None:
    """The component as the daemon builds it: the real client from [twilio] (api_base_url → Prism), a
    singleton job every poll_interval, and the webhooks sharing the daemon's ingestor."""
    from daemon.sources.twilio_calls import _build

    settings = settings_for(tmp_path, store.url, http={"public_url": PUBLIC},
                            twilio={"account_sid": ACCOUNT, "auth_token": AUTH_TOKEN, "api_base_url": prism_url},
                            twilio_source={"enabled": True, "numbers": [HOTLINE], "max_calls": 2,
                                           "poll_interval": "2m"})
    jobs: list[tuple[str, Any, float, bool]] = []

    class FakeDaemon:
        def __init__(self) -> None:
            self.settings, self.store, self.clock, self.log = settings, store, clock, None
            self.ingestor = Ingestor(store, clock, detect_rules(settings))
            self.services = Services(settings=settings, store=store, clock=clock, queue=CallbackQueue(store, clock))

        def add_job(self, name: str, fn: Any, seconds: float, *, singleton: bool = False) -> None:
            jobs.append((name, fn, seconds, singleton))

    daemon = FakeDaemon()
    comp = _build(daemon)  # type: ignore[arg-type]
    assert comp is not None and daemon.services.extra["ingestor"] is daemon.ingestor
    comp.start()
    [(name, fn, seconds, singleton)] = jobs
    assert (name, seconds, singleton) == (f"poll:twilio:{ACCOUNT}", 120.0, True)
    res = fn()
    assert (res.listed, res.attempts) == (2, 1)
    assert load_cursor(store, f"twilio:{ACCOUNT}") is not None
