"""The Twilio call reducer: webhook forms and call-list records → attempts, dead letters or nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from callback_queue.attempts import Attempt, DeadLetter, Origin, Outcome
from callback_queue.numbers import normalizer_from
from daemon.app import COMPONENT_BUILDERS, FEATURE_MODULES, load_features
from daemon.settings import Settings
from daemon.sources import twilio_calls
from daemon.sources.twilio_calls import Rules, TwilioCallReducer

ACCOUNT = "AC" + "0" * 32
HOTLINE = "+861012345678"
CITIZEN = "+8613800138001"
NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
TS = int(NOW.timestamp())


def reducer(**rules: object) -> TwilioCallReducer:
    return TwilioCallReducer(Rules(**{"numbers": frozenset({HOTLINE}), **rules}),  # type: ignore[arg-type]
                             normalizer_from("CN", 5, [], []), account_sid=ACCOUNT)


def form(**extra: str) -> dict[str, str]:
    return {"AccountSid": ACCOUNT, "CallSid": "CA" + "1" * 32, "From": "13800138001", "To": HOTLINE,
            "Direction": "inbound", **extra}


def status(st: str, duration: str | None = None, **rules: object) -> Attempt:
    extra = {"CallStatus": st, "Timestamp": "Fri, 27 Nov 2026 09:50:00 +0000"}
    if duration is not None:
        extra["CallDuration"] = duration
    r = reducer(**rules).status(form(**extra), NOW)
    assert isinstance(r, Attempt)
    return r


@pytest.mark.parametrize("st", ["busy", "no-answer", "failed", "canceled"])
def test_failed_statuses_keep_their_reason_at_rank_2(st: str) -> None:
    a = status(st, "0")
    assert (a.outcome, a.reason, a.origin, a.origin.rank) == (Outcome.FAILED, st, Origin.TWILIO, 2)
    assert (a.system, a.call_id, a.caller, a.number) == (f"twilio:{ACCOUNT}", "CA" + "1" * 32, "13800138001",
                                                         CITIZEN)


def test_completed_is_rank_1_and_read_by_its_duration() -> None:
    short = status("completed", "30")
    assert (short.outcome, short.reason, short.wait_seconds, short.origin.rank) == (Outcome.FAILED, "abandon", 30, 1)
    # Timestamp is the end; CallDuration gives the start
    assert (short.started_ts, short.ended_ts) == (TS - 600 - 30, TS - 600)
    long = status("completed", "60")
    assert (long.outcome, long.reason, long.wait_seconds, long.origin.rank) == (Outcome.CONNECTED, "connect", None, 1)
    assert status("completed", "600", answered_min_seconds=900).outcome is Outcome.FAILED
    assert status("completed", "5", completed_means_answered=True).outcome is Outcome.CONNECTED
    unknown = status("completed")
    assert (unknown.outcome, unknown.reason, unknown.wait_seconds) == (Outcome.FAILED, "abandon", 0)


@pytest.mark.parametrize("result,outcome,reason,wait", [
    ("bridged", Outcome.CONNECTED, "connect", None),
    ("hangup", Outcome.FAILED, "abandon", 40),
    ("leave", Outcome.FAILED, "exitwithkey", 40),
    ("redirected", Outcome.FAILED, "failed", 40),
    ("error", Outcome.FAILED, "failed", 40),
    ("system-error", Outcome.FAILED, "failed", 40),
    ("queue-full", Outcome.FAILED, "refused", 40),
])
def test_queue_results(result: str, outcome: Outcome, reason: str, wait: int | None) -> None:
    a = reducer().queue(form(QueueResult=result, QueueTime="40", QueueSid="QU" + "2" * 32), NOW)
    assert isinstance(a, Attempt)
    assert (a.outcome, a.reason, a.wait_seconds, a.origin.rank) == (outcome, reason, wait, 2)
    assert (a.started_ts, a.ended_ts, a.queue) == (TS - 40, TS, "QU" + "2" * 32)


@pytest.mark.parametrize("dial,outcome,reason", [
    ("completed", Outcome.CONNECTED, "connect"), ("answered", Outcome.CONNECTED, "connect"),
    ("busy", Outcome.FAILED, "busy"), ("no-answer", Outcome.FAILED, "no-answer"),
    ("failed", Outcome.FAILED, "failed"), ("canceled", Outcome.FAILED, "canceled"),
])
def test_dial_results(dial: str, outcome: Outcome, reason: str) -> None:
    a = reducer().dial(form(DialCallStatus=dial, DialCallSid="CA" + "3" * 32), NOW)
    assert isinstance(a, Attempt) and (a.outcome, a.reason, a.origin) == (outcome, reason, Origin.TWILIO)


@pytest.mark.parametrize("extra", [
    {"CallStatus": "ringing"}, {"CallStatus": "in-progress"},
    {"CallStatus": "completed", "Direction": "outbound-dial"},   # a child leg
    {"CallStatus": "busy", "To": "+861099999999"},               # not a hotline number
])
def test_ignored(extra: dict[str, str]) -> None:
    assert reducer().status(form(**extra), NOW) is None


@pytest.mark.parametrize("kind,extra,why", [
    ("status", {"CallStatus": "exploded"}, "call status 'exploded'"),
    ("status", {"CallStatus": "busy", "CallSid": "nope"}, "CallSid"),
    ("status", {"CallStatus": "completed", "CallDuration": "abc"}, "CallDuration"),
    ("status", {"CallStatus": "busy", "Timestamp": "yesterday"}, "Timestamp"),
    ("status", {"CallStatus": "busy", "From": ""}, "From"),
    ("status", {"CallStatus": "busy", "AccountSid": "ACxyz"}, "AccountSid"),
    ("queue", {"QueueResult": "weird"}, "QueueResult"),
    ("queue", {"QueueResult": "hangup", "QueueTime": "-4"}, "QueueTime"),
    ("dial", {}, "DialCallStatus"),
])
def test_bad_input_is_a_dead_letter(kind: str, extra: dict[str, str], why: str) -> None:
    r = getattr(reducer(), kind)(form(**extra), NOW, position="webhook:/x")
    assert isinstance(r, DeadLetter) and why in r.reason
    assert r.position.startswith("webhook:/x:") and r.source.startswith("twilio")
    assert b"CallSid=" in r.raw


def test_call_records_from_the_list() -> None:
    rec = {"sid": "CA" + "4" * 32, "account_sid": ACCOUNT, "from": "+8613800138001", "to": HOTLINE,
           "status": "no-answer", "direction": "inbound", "start_time": datetime(2026, 11, 27, 9, 0, tzinfo=UTC),
           "end_time": None, "duration": "0"}
    a = reducer().call(rec)
    assert isinstance(a, Attempt)
    assert (a.reason, a.started_ts, a.ended_ts, a.number) == ("no-answer", TS - 3600, TS - 3600, CITIZEN)
    assert reducer().call({**rec, "direction": "outbound-api"}) is None
    assert reducer().call({**rec, "status": "in-progress"}) is None
    bad = reducer().call({**rec, "start_time": None, "end_time": None}, position="poll:+86")
    assert isinstance(bad, DeadLetter) and bad.position == f"poll:+86:{rec['sid']}"


def test_registered_as_a_feature_and_off_by_default() -> None:
    load_features()
    assert "daemon.sources.twilio_calls" in FEATURE_MODULES and twilio_calls._build in COMPONENT_BUILDERS

    class D:
        settings = Settings()

    assert twilio_calls._build(D()) is None  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="numbers"):
        Settings.model_validate({"twilio_source": {"enabled": True}})
    with pytest.raises(ValueError, match="E.164"):
        Settings.model_validate({"twilio_source": {"numbers": ["01012345678"]}})
