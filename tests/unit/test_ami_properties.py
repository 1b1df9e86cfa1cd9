"""Property tests (hypothesis) of the AMI input path: bytes off the socket -> packets (daemon/ami/client.py:
framing, strict decoding, asterisk-ami's parsing, the link's dispatch) -> events -> the reducer
(daemon/ami/events.py) -> attempts.

- Garbage never kills the reader: whatever follows the banner, every packet is accounted for - an
  event, a response, or a dead letter with a reason - and nothing escapes as an exception.
- Arbitrary events never make the reducer raise, and every attempt it returns fits the attempts
  table (PostgreSQL enforces the widths and integer ranges: a value that does not fit would fail the
  whole batch, again at every retry); events it cannot use are rejected with a reason (the source
  stores them as dead letters).
- Round trip: generated calls, written as the AMI events Asterisk sends for them (CAPTURES.md) and as
  the queue_log lines it writes, give the same attempts through the wire and the reducer as through
  daemon/sources/queue_log.py; whole garbage packets between the events change nothing.

The bounded fuzz run in CI is the "ci" hypothesis profile (tests/conftest.py); CALLBACKD_FUZZ=full
runs 20 times as many examples.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from callback_queue.attempts import Attempt, Origin, Outcome
from callback_queue.numbers import normalizer_from
from daemon.ami.client import AmiLink, _Client
from daemon.ami.events import RELEVANT, AmiReducer
from daemon.sources.queue_log import QueueLogParser
from tests.support.storable import unstorable as storable

NORM = normalizer_from("CN", 5, [], [])
BANNER = b"Asterisk Call Manager/11.0.0\r\n"


# -- the real reader over a socket pair ------------------------------------------------------------
@dataclass
class Wire:
    """One connection's bytes through the real reader and the link's dispatch, in this thread."""

    events: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    responses: list[Any] = field(default_factory=list)
    bad: list[tuple[bytes, str]] = field(default_factory=list)
    error: BaseException | None = None

    def read(self, data: bytes) -> Wire:
        link = AmiLink("pbx", "127.0.0.1", 1, "u", "s", on_bad=lambda raw, why: self.bad.append((raw, why)),
                       clock=lambda: 1000.0)
        link.subscribe(None, lambda name, keys, read_at: self.events.append((name, keys)))
        client = _Client("127.0.0.1", 1, timeout=3, on_bad=link._bad)
        client.add_listener(on_event=link._on_event, on_unknown=link._on_unknown,
                            on_response=lambda source, response: self.responses.append(response))
        ours, theirs = socket.socketpair()
        client._socket, client.finished = ours, threading.Event()

        def send() -> None:
            theirs.sendall(data)
            theirs.shutdown(socket.SHUT_WR)

        writer = threading.Thread(target=send, daemon=True)
        writer.start()
        try:
            client.listen()
        finally:
            writer.join(10)
            ours.close()
            theirs.close()
        self.error = client.error
        return self


def expected_packets(data: bytes) -> int:
    """Packets the reader must account for after the banner: complete ones, and an unfinished tail."""
    rest = data[data.index(b"\r\n") + 2:]
    *complete, tail = rest.split(b"\r\n\r\n")
    return len(complete) + (1 if tail.strip() else 0)


# -- strategies ----------------------------------------------------------------------------------
FRAGMENTS = st.sampled_from([
    b"\r\n", b"\r\n\r\n", b"Event: ", b"event:", b"Response: ", b"Response: Success", b": ", b":", b"\n", b"\r",
    b"Uniqueid: 1795772422.1", b"Event: QueueCallerJoin\r\n", b"Event: QueueCallerAbandon\r\nUniqueid: 1.1",
    b"CallerIDName: \xe5\xbc\xa0", b"CallerIDName: \xff\xfe", b"Queue: \xff", b"\xe4\xb8", b"\x00", b"\x0b",
    b"Timestamp: nan", b"HoldTime: 99999999999999999999", b"ActionID: 1", b"Event: \r\n", b"\xef\xbb\xbf",
])
garbage = st.lists(st.one_of(st.binary(max_size=30), FRAGMENTS), max_size=40).map(b"".join)

NAMES = sorted(RELEVANT) + ["newchannel", "cdr", "dialend", "originateresponse", "", "QueueCallerJoin"]
ODD = st.sampled_from(["", " ", "nan", "inf", "-inf", "1e400", "-5", "99999999999999999999", "1795772422.5",
                       "1795772422", "253402300800", "0x10", "١٢٣", "12 ", " 12", "<unknown>", "anonymous",
                       "TIMEOUT", "LEAVEEMPTY", "QUEUESTATUS", "a" * 200, "1" * 30, "+8613812345678"])
VALUES = st.one_of(ODD, st.text(max_size=40))
KEYS = st.sampled_from(["uniqueid", "timestamp", "holdtime", "calleridnum", "callerid", "queue", "variable",
                        "value", "linkedid", "channel"])
events = st.lists(st.tuples(st.sampled_from(NAMES),
                            st.dictionaries(KEYS, VALUES, max_size=7),
                            st.sampled_from(["1.1", "1.2", "sys-9.9", "x" * 140])),
                  max_size=30)


# -- 1. the reader -------------------------------------------------------------------------------
@given(garbage)
def test_any_bytes_after_the_banner_are_events_responses_or_dead_letters(data: bytes) -> None:
    data = BANNER + data
    w = Wire().read(data)
    assert w.error is None, repr(w.error)
    assert len(w.events) + len(w.responses) + len(w.bad) == expected_packets(data)
    assert all(raw and why and why.strip() for raw, why in w.bad), w.bad
    for name, keys in w.events:
        assert name == name.lower() and all(k == k.lower() for k in keys)


@given(st.binary(max_size=60).filter(lambda b: not b.lower().startswith(b"asterisk call manager/")))
def test_a_stream_that_is_not_ami_is_refused_with_a_reason(data: bytes) -> None:
    w = Wire().read(data + b"\r\nEvent: FullyBooted\r\n\r\n")
    assert w.events == [] and w.responses == []
    assert w.error is not None and "no AMI banner" in str(w.error)
    assert len(w.bad) <= 1 and all(why for _, why in w.bad)


# -- 2. the reducer ------------------------------------------------------------------------------
@given(events, st.booleans())
def test_the_reducer_never_raises_and_every_attempt_fits_the_table(evs: list[Any], varset: bool) -> None:
    r = AmiReducer(system="pbx", normalizer=NORM, queuestatus_seen=varset)
    out: list[Attempt] = []
    for i, (name, keys, uid) in enumerate(evs):
        a = r.feed(name, {"uniqueid": uid, **keys}, 1_700_000_000.0 + i)
        if a is not None:
            out.append(a)
    out += r.expire(1_700_000_100.0) + r.settle_all()
    assert all(leg.abandon_ts is None for leg in r.legs.values())   # left: calls still in the queue
    assert [(a, storable(a)) for a in out if storable(a)] == []
    rejects = r.take_rejects()
    assert all(raw and why for raw, why in rejects), rejects


@given(garbage)
def test_whatever_the_wire_delivers_the_reducer_takes(data: bytes) -> None:
    w = Wire().read(BANNER + data)
    r = AmiReducer(system="pbx", normalizer=NORM)
    out = [a for name, keys in w.events if (a := r.feed(name, keys, 1_700_000_000.0)) is not None]
    out += r.settle_all()
    assert [(a, storable(a)) for a in out if storable(a)] == []


def test_unusable_times_and_hold_times_are_rejected_with_a_reason() -> None:
    """Found by the properties above: `Timestamp: nan` raised ValueError and `inf` OverflowError out
    of feed() (the whole flushed batch was lost); a huge Timestamp or HoldTime made an attempt no
    database column holds (the batch failed at every retry)."""
    for key, value in (("timestamp", "nan"), ("timestamp", "inf"), ("timestamp", "1e300"),
                       ("timestamp", "-5"), ("timestamp", "soon"), ("holdtime", "99999999999"),
                       ("holdtime", "-3"), ("holdtime", "a while")):
        r = AmiReducer(system="pbx", normalizer=NORM)
        assert r.feed("queuecallerjoin", {"uniqueid": "1.1", "calleridnum": "13812345678", "queue": "q"},
                      1_700_000_000.0) is None
        got = r.feed("queuecallerabandon", {"uniqueid": "1.1", "queue": "q", "holdtime": "5", key: value},
                     1_700_000_005.0)
        assert got is None
        [(raw, why)] = r.take_rejects()
        assert value.encode() in raw and key in why.lower(), (raw, why)
        # the visit is still open: the next valid event of the call settles it
        a = r.feed("queuecallerabandon", {"uniqueid": "1.1", "queue": "q", "holdtime": "5"}, 1_700_000_006.0)
        assert a is not None or r.settle_all()


# -- 3. round trip: AMI events and queue_log lines of the same calls -------------------------------
mobiles = st.builds(lambda p, n: f"1{p}{n:09d}", st.sampled_from("3456789"), st.integers(0, 10**9 - 1))
queue_names = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="|"),
                      min_size=1, max_size=20).filter(lambda s: s.strip() == s)
#: how a visit ends -> (queue_log verb and data for a wait w, reason)
ENDS = {
    "connect": ("CONNECT|{w}|1795772500.9|3", "connect"),
    "abandon": ("ABANDON|1|1|{w}", "abandon"),
    "timeout": ("EXITWITHTIMEOUT|1|1|{w}", "timeout"),
    "exitempty": ("EXITEMPTY|1|1|{w}", "exitempty"),
    "withdraw": ("WITHDRAW|1|1|{w}", "withdraw"),
    "exitwithkey": ("EXITWITHKEY|5|1|1|{w}", "exitwithkey"),
}
STATUS = {"timeout": "TIMEOUT", "exitempty": "LEAVEEMPTY", "withdraw": "WITHDRAW"}
visits = st.lists(st.tuples(mobiles, queue_names, st.integers(0, 3600), st.integers(0, 600),
                            st.sampled_from(sorted(ENDS))), min_size=1, max_size=8)


def ami_events(uid: str, caller: str, queue: str, join: int, wait: int, end: str) -> list[tuple[int, str, list]]:
    """The events Asterisk 22 sends for one visit (shared/asterisk/CAPTURES.md), with their times."""
    t = join + wait
    ev: list[tuple[int, str, list]] = [(join, "QueueCallerJoin", [("Channel", f"PJSIP/trunk-{uid}"),
                                        ("CallerIDNum", caller), ("CallerIDName", "张三"), ("Queue", queue),
                                        ("Position", 1), ("Count", 1)])]
    if end == "connect":
        ev += [(t, "QueueCallerLeave", [("Queue", queue), ("Position", 1)]),
               (t, "AgentConnect", [("Queue", queue), ("HoldTime", wait), ("RingTime", 3),
                                    ("Interface", "PJSIP/8001")])]
    elif end == "abandon":
        ev += [(t, "HangupRequest", [("Cause", 16)]),
               (t, "QueueCallerAbandon", [("Queue", queue), ("Position", 1), ("OriginalPosition", 1),
                                          ("HoldTime", wait)]),
               (t, "QueueCallerLeave", [("Queue", queue)]), (t, "Hangup", [("Cause", 16)])]
    elif end == "exitwithkey":
        ev += [(t, "QueueCallerLeave", [("Queue", queue), ("Position", 1)]), (t, "Hangup", [("Cause", 16)])]
    else:
        ev += [(t, "QueueCallerAbandon", [("Queue", queue), ("Position", 1), ("OriginalPosition", 1),
                                          ("HoldTime", wait)]),
               (t, "QueueCallerLeave", [("Queue", queue)]),
               (t, "VarSet", [("Variable", "QUEUESTATUS"), ("Value", STATUS[end])]),
               (t, "Hangup", [("Cause", 16)])]
    return ev


def render(name: str, ts: int, uid: str, keys: list[tuple[str, Any]], frac: int) -> bytes:
    lines = [f"Event: {name}", "Privilege: call,all", f"Timestamp: {ts}.{frac:06d}", f"Uniqueid: {uid}",
             *(f"{k}: {v}" for k, v in keys)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


not_a_packet = st.binary(min_size=1, max_size=30).filter(
    lambda b: b"\r\n\r\n" not in b + b"\r\n" and not b.lower().startswith((b"event", b"response")) and b.strip())


@given(visits, st.integers(1_500_000_000, 2_000_000_000), st.lists(not_a_packet, max_size=5), st.randoms())
def test_ami_events_and_queue_log_lines_of_the_same_calls_give_the_same_attempts(vs, start, junk, rnd) -> None:
    packets: list[tuple[int, int, bytes]] = []
    lines: list[tuple[int, int, str]] = []
    for i, (caller, queue, offset, wait, end) in enumerate(vs):
        uid, join = f"{start}.{i}", start + offset
        verb, _ = ENDS[end]
        lines.append((join, 2 * i, f"{join}|{uid}|{queue}|NONE|ENTERQUEUE||{caller}|1"))
        lines.append((join + wait, 2 * i + 1, f"{join + wait}|{uid}|{queue}|NONE|{verb.format(w=wait)}"))
        for k, (ts, name, keys) in enumerate(ami_events(uid, caller, queue, join, wait, end)):
            packets.append((ts, 100 * i + k, render(name, ts, uid, keys, rnd.randrange(10**6))))
    stream = [p for _, _, p in sorted(packets)]
    for j in junk:  # whole packets that are not AMI, anywhere in the stream
        stream.insert(rnd.randrange(len(stream) + 1), j + b"\r\n\r\n")
    w = Wire().read(BANNER + b"".join(stream))
    assert len(w.bad) == len(junk) and all(why for _, why in w.bad)
    r = AmiReducer(system="pbx1", normalizer=NORM)
    from_ami = [a for name, keys in w.events if (a := r.feed(name, keys, 0.0)) is not None] + r.settle_all()
    assert r.take_rejects() == []

    p = QueueLogParser(source="ql", system="pbx1", normalizer=NORM)
    from_log = [a for _, _, ln in sorted(lines) if isinstance(a := p.feed(ln.encode(), "x"), Attempt)]

    def key(a: Attempt) -> tuple[Any, ...]:
        return a._replace(origin=Origin.QUEUE_LOG)

    assert sorted(map(key, from_ami)) == sorted(map(key, from_log))
    assert {a.origin for a in from_ami} <= {Origin.AMI}
    assert len(from_ami) == len(vs)
    assert {a.call_id: a.outcome for a in from_ami} == {
        f"{start}.{i}": Outcome.CONNECTED if v[4] == "connect" else Outcome.FAILED for i, v in enumerate(vs)}
