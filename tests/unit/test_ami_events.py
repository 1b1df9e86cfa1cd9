"""The AMI reducer alone (daemon/ami/events.py): the traps of CAPTURES.md, legacy names, odd order."""

from __future__ import annotations

from support.ami_env import CAPTURES
from support.ami_server import event_packets

from callback_queue.attempts import Origin, Outcome
from callback_queue.numbers import normalizer_from
from daemon.ami.events import AmiReducer, filter_regexes

NORM = normalizer_from("US", 5, [], [])


def feed(r: AmiReducer, events: list[tuple[str, dict[str, str]]], t0: float = 1000.0) -> list:
    out = []
    for i, (name, keys) in enumerate(events):
        a = r.feed(name.lower(), {k.lower(): v for k, v in keys.items()}, t0 + i)
        if a is not None:
            out.append(a)
    return out


def step(name: str, *, varset: bool = True) -> list:
    r = AmiReducer(system="pbx", normalizer=NORM, queuestatus_seen=varset)
    out = []
    for pkt in event_packets(CAPTURES / "steps" / f"{name}.ami.raw", timestamps=True):
        keys = dict(line.split(": ", 1) for line in pkt.decode().split("\r\n") if ": " in line)
        keys = {k.lower(): v for k, v in keys.items()}
        if not varset and keys["event"] == "VarSet":
            continue
        a = r.feed(keys["event"].lower(), keys, 0.0)
        if a is not None:
            out.append(a)
    return out + r.settle_all()


def test_timeout_and_abandon_told_apart_as_the_queue_log_does() -> None:
    first = step("01_inbound_timeout")
    assert [(a.call_id, a.reason, a.wait_seconds) for a in first] == [("1795772422.1", "timeout", 5)]
    assert [a.reason for a in step("02_inbound_abandon")] == ["abandon"]       # HangupRequest before
    assert [a.reason for a in step("03_inbound_abandon_ctx")] == ["abandon"]   # died in the queue, no QUEUESTATUS
    assert [a.reason for a in step("04_inbound_ring_timeout")] == ["timeout"]
    assert [a.reason for a in step("05_inbound_ring_abandon")] == ["abandon"]
    assert [a.reason for a in step("06_inbound_agent_noanswer")] == ["timeout"]
    assert [a.reason for a in step("07_inbound_agent_noanswer_abandon")] == ["abandon"]
    a = step("08_inbound_answered_staffed")
    assert [(x.outcome, x.reason, x.wait_seconds, x.queue) for x in a] == [
        (Outcome.CONNECTED, "connect", 1, "hotline_staffed")]
    assert a[0].origin is Origin.AMI and a[0].number == "+15550303" and a[0].started_ts == 1795772476


def test_without_the_varset_feed_the_fallback_rule_is_hangup_request_or_timeout() -> None:
    assert [a.reason for a in step("01_inbound_timeout", varset=False)] == ["timeout"]
    assert [a.reason for a in step("02_inbound_abandon", varset=False)] == ["abandon"]
    assert [a.reason for a in step("03_inbound_abandon_ctx", varset=False)] == ["timeout"]  # the rule's limit


def test_callbacks_produce_no_inbound_attempts() -> None:
    for name in ("10_callback_answer", "13_callback_busy", "18_callback_agent_first_busy", "21_callback_channelid"):
        assert step(name) == []


def test_legacy_join_leave_and_keys_in_any_case() -> None:
    r = AmiReducer(system="old", normalizer=NORM)
    got = feed(r, [
        ("Join", {"Channel": "SIP/trunk-1", "CallerIDNum": "5550404", "Queue": "q", "Position": "1",
                  "UNIQUEID": "1400000000.7"}),
        ("HangupRequest", {"uniqueid": "1400000000.7"}),
        ("QueueCallerAbandon", {"Queue": "q", "Uniqueid": "1400000000.7", "HoldTime": "12"}),  # <=11: no CallerID
        ("Leave", {"Channel": "SIP/trunk-1", "Queue": "q", "Uniqueid": "1400000000.7"}),
    ])
    assert [(a.system, a.call_id, a.number, a.reason, a.wait_seconds, a.started_ts, a.ended_ts) for a in got] == [
        ("old", "1400000000.7", "+15550404", "abandon", 12, 1000, 1002)]
    r = AmiReducer(system="old", normalizer=NORM)
    got = feed(r, [
        ("Join", {"CallerID": "5550405", "Queue": "q", "Uniqueid": "sys1-1400000000.8"}),  # 1.4 spelling
        ("Leave", {"Queue": "q", "Uniqueid": "sys1-1400000000.8"}),
        ("AgentConnect", {"Queue": "q", "Uniqueid": "sys1-1400000000.8", "Holdtime": "4", "Member": "SIP/200"}),
    ])
    assert [(a.call_id, a.outcome, a.wait_seconds, a.number) for a in got] == [
        ("sys1-1400000000.8", Outcome.CONNECTED, 4, "+15550405")]  # systemname prefix kept


def test_order_is_not_causal_and_newchannel_has_no_number() -> None:
    r = AmiReducer(system="pbx", normalizer=NORM)
    got = feed(r, [
        ("Newchannel", {"Uniqueid": "9.1", "CallerIDNum": "<unknown>"}),
        ("Cdr", {"UniqueID": "9.1", "Source": "5550606", "Disposition": "ANSWERED"}),  # a Cdr first: ignored
        ("QueueCallerJoin", {"Uniqueid": "9.1", "CallerIDNum": "<unknown>", "Queue": "hotline"}),
        ("QueueCallerAbandon", {"Uniqueid": "9.1", "HoldTime": "7", "Queue": "hotline"}),
        ("QueueCallerLeave", {"Uniqueid": "9.1", "CallerIDNum": "5550606"}),
        ("VarSet", {"Uniqueid": "9.1", "Variable": "QUEUESTATUS", "Value": "TIMEOUT"}),
    ])
    assert [(a.caller, a.number, a.reason, a.wait_seconds) for a in got] == [("5550606", "+15550606", "timeout", 7)]


def test_an_abandon_seen_without_its_join_uses_the_hold_time() -> None:
    r = AmiReducer(system="pbx", normalizer=NORM)
    got = feed(r, [("QueueCallerAbandon", {"Uniqueid": "9.2", "HoldTime": "20", "Queue": "q",
                                           "Timestamp": "1795772600.4"})])
    assert got == []
    late = r.expire(1000.0 + 31)
    assert [(a.started_ts, a.ended_ts, a.reason) for a in late] == [(1795772580, 1795772600, "timeout")]


def test_filter_regexes_name_every_event_needed() -> None:
    event_line, varset = filter_regexes()
    for name in ("QueueCallerJoin", "QueueCallerAbandon", "AgentConnect", "Hangup", "DialEnd", "OriginateResponse"):
        assert f"|{name}|" in event_line.replace("(", "|").replace(")", "|")
    assert "QUEUESTATUS" in varset


def test_a_queue_event_without_uniqueid_is_refused_with_a_reason_but_a_global_varset_is_not() -> None:
    r = AmiReducer(system="pbx", normalizer=NORM)
    out = feed(r, [("QueueCallerJoin", {"Queue": "hotline", "CallerIDNum": "5550101"}),
                   ("VarSet", {"Channel": "none", "Variable": "GLOBALX", "Value": "1"}),
                   ("QueueCallerJoin", {"Queue": "hotline", "CallerIDNum": "5550102", "Uniqueid": "9.1"})])
    assert out == []
    [(raw, why)] = r.take_rejects()
    assert b"5550101" in raw and "no Uniqueid" in why
    assert list(r.legs) == ["9.1"]   # the good event after the bad one is still read
