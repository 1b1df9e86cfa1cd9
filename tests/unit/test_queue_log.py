"""queue_log parsing: every layout from 1.4 to 22, bad lines rejected with a reason."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from callback_queue.attempts import Attempt, DeadLetter, Outcome
from callback_queue.numbers import normalizer_from
from daemon.sources.queue_log import QueueLogParser


def parser() -> QueueLogParser:
    return QueueLogParser(source="queue_log:pbx", system="pbx", normalizer=normalizer_from("CN", 5, [], []))


def feed_all(p: QueueLogParser, lines: list[str | bytes]) -> list[Attempt | DeadLetter]:
    out = []
    for i, line in enumerate(lines):
        r = p.feed(line.encode() if isinstance(line, str) else line, str(i))
        if r is not None:
            out.append(r)
    return out


def test_asterisk_22_abandon():
    [a] = feed_all(parser(), ["1795772432|1795772431.3|hotline|NONE|ENTERQUEUE||13812345678|1",
                              "1795772440|1795772431.3|hotline|NONE|ABANDON|1|1|8"])
    assert a == Attempt("pbx", "1795772431.3", "13812345678", "+8613812345678", 1795772432, 1795772440,
                        Outcome.FAILED, "abandon", 8, "hotline", a.origin)


def test_asterisk_14_layout():
    # 1.4: ENTERQUEUE url|callerid; EXITWITHTIMEOUT position only; CONNECT holdtime|bridged-uniqueid
    atts = feed_all(parser(), [
        "1200000000|1200000000.1|q1|NONE|ENTERQUEUE||13812345678",
        "1200000030|1200000000.1|q1|NONE|EXITWITHTIMEOUT|1",
        "1200000100|1200000100.2|q1|NONE|ENTERQUEUE||13912345678",
        "1200000104|1200000100.2|q1|Agent/1001|CONNECT|4|1200000104.3",
        "1200000164|1200000100.2|q1|Agent/1001|COMPLETECALLER|4|60|1",
        "1200000200|1200000200.4|q1|NONE|ENTERQUEUE||13712345678",
        "1200000210|1200000200.4|q1|NONE|EXITWITHKEY|5|1",
    ])
    assert [(a.reason, a.wait_seconds, a.outcome) for a in atts] == [
        ("timeout", 30, Outcome.FAILED), ("connect", 4, Outcome.CONNECTED), ("exitwithkey", 10, Outcome.FAILED)]


def test_asterisk_18_plus_other_failures_and_caller_name():
    atts = feed_all(parser(), [
        "1700000000|sys1-1700000000.7|q|NONE|ENTERQUEUE||13812345678|2|Zhang San",  # 22.4+ caller name
        "1700000009|sys1-1700000000.7|q|NONE|EXITEMPTY|2|2|9",
        "1700000100|x.8|q|NONE|ENTERQUEUE||13812345679|1",
        "1700000107|x.8|q|NONE|WITHDRAW|1|1|7|moved to web",
        "1700000200|x.9|q|NONE|ENTERQUEUE||13812345670|1",
        "1700000204|x.9|q|NONE|EXITWITHKEY|1|1|1|4",
    ])
    assert [(a.call_id, a.reason, a.wait_seconds) for a in atts] == [
        ("sys1-1700000000.7", "exitempty", 9), ("x.8", "withdraw", 7), ("x.9", "exitwithkey", 4)]


def test_noise_verbs_and_vendor_verbs_are_tolerated():
    p = parser()
    out = feed_all(p, ["1795772420|NONE|NONE|NONE|QUEUESTART|",
                       "1795772461|1795772460.11|hotline|Local/301@agents/n|ADDMEMBER|",
                       "1795772464|1795772460.11|hotline|Agent 301|RINGNOANSWER|3000",
                       "1795772464|1795772460.11|hotline|NONE|DID|1000",
                       "1795772464|1795772460.11|hotline|NONE|CALLSTATUS|x"])
    assert out == []
    assert p.unknown_verbs == {"CALLSTATUS": 1}


def test_a_call_visiting_two_queues_is_one_attempt_per_visit_with_the_first_entry_time():
    atts = feed_all(parser(), [
        "100|c.1|q1|NONE|ENTERQUEUE||13812345678|1",
        "130|c.1|q1|NONE|EXITWITHTIMEOUT|1|1|30",
        "131|c.1|q2|NONE|ENTERQUEUE||13812345678|1",
        "140|c.1|q2|A|CONNECT|9|c.2|1",
    ])
    # both carry the same identity (the caller leg); the store merges them: connected wins
    assert [(a.call_id, a.outcome) for a in atts] == [("c.1", Outcome.FAILED), ("c.1", Outcome.CONNECTED)]


def test_closing_line_without_entry_keeps_the_call_with_unknown_caller():
    [a] = feed_all(parser(), ["1795772433|1795772431.3|hotline|NONE|ABANDON|1|1|5"])
    assert a.number is None and a.started_ts == 1795772428 and a.reason == "abandon"


def test_realtime_time_strings():
    from zoneinfo import ZoneInfo

    p = QueueLogParser(source="s", system="pbx", normalizer=normalizer_from("CN", 5, [], []),
                       tz=ZoneInfo("Asia/Shanghai"))
    [a] = feed_all(p, ["2026-11-27 17:40:22.085718|u.1|q|NONE|ENTERQUEUE||13812345678|1",
                       "2026-11-27 17:40:30|u.1|q|NONE|ABANDON|1|1|8"])
    assert a.started_ts == 1795772422


BAD = {
    b"": "empty line",
    b"1795772427|1795772422.1|hotl": "fields",
    b"17957x2427|1795772422.1|hotline|NONE|ABANDON|1|1|5": "time field",
    b"1795772427|1795772422.1|hotline|NONE|ABANDON|1|1": "ABANDON has 2 data fields",
    b"1795772427|1795772422.1|hotline|NONE|ABANDON|1|1|5|6|7": "ABANDON has 5 data fields",
    b"1795772427|1795772422.1|hotline|NONE|ABANDON|a|1|5": "not a number",
    b"1795772427|NONE|hotline|NONE|ABANDON|1|1|5": "callid",
    b"1795772427|1795772422.1|hotline|NONE|ENTERQUEUE|": "ENTERQUEUE has 1 data fields",
    b"1795772427|1795772422.1|hotline|NONE|ABAN\xffDON|1|1|5": "invalid UTF-8",
    b"1795772427|1795772422.1|hotline|NONE|abandon|1|1|5": "not a queue_log verb",
    b"1795772427|17957\xfe72422.1|hotline|NONE|ENTERQUEUE||138|1|name": "invalid UTF-8",
}


def test_bad_lines_are_dead_letters_with_reasons():
    p = parser()
    for raw, why in BAD.items():
        r = p.feed(raw, "pos")
        assert isinstance(r, DeadLetter), raw
        assert why in r.reason, (raw, r.reason)
        assert r.raw == raw and r.position == "pos"


def test_odd_bytes_only_in_the_caller_name_are_accepted():
    p = parser()
    assert p.feed(b"100|u.1|q|NONE|ENTERQUEUE||13812345678|1|Zh\xe1ng", "0") is None
    a = p.feed(b"108|u.1|q|NONE|ABANDON|1|1|8", "1")
    assert isinstance(a, Attempt) and a.number == "+8613812345678"


GOOD_LINES = st.sampled_from([
    "{t}|{c}|hotline|NONE|ENTERQUEUE||{n}|{p}", "{t}|{c}|hotline|NONE|ENTERQUEUE||{n}",
    "{t}|{c}|hotline|NONE|ABANDON|{p}|{p}|{w}", "{t}|{c}|hotline|NONE|EXITWITHTIMEOUT|{p}|{p}|{w}",
    "{t}|{c}|hotline|NONE|EXITWITHTIMEOUT|{p}", "{t}|{c}|hotline|A|CONNECT|{w}|x.1|{p}",
    "{t}|{c}|hotline|A|COMPLETECALLER|{w}|{w}|{p}", "{t}|{c}|hotline|NONE|EXITEMPTY|{p}|{p}|{w}",
    "{t}|{c}|hotline|NONE|ABANDON|{p}|{p}|{w}\r", "{t}|{c}|hotline|NONE|ABANDON|x|{p}|{w}",
    "{t}|{c}|hotline|NONE|ENTERQUEUE||{n}|{p}|Name", "{t}|NONE|hotline|NONE|ABANDON|1|1|{w}",
    "{t}|{c}|hotline|A|CONNECT|{w}|x.1", "garbage {t}", "{t}|{c}",
])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(GOOD_LINES, st.integers(0, 10**10), st.sampled_from(["u.1", "u.2", "u.3", ""]),
                          st.sampled_from(["13812345678", "01062345678", "", "1000", "anonymous"]),
                          st.integers(0, 9), st.integers(0, 600)), max_size=40))
def test_batch_fast_path_equals_line_by_line(items):
    lines = [tpl.format(t=t, c=c, n=n, p=p, w=w).encode() for tpl, t, c, n, p, w in items]
    one = parser()
    slow = feed_all(one, lines)
    two = parser()
    attempts, dead = two.feed_many(lines)
    assert attempts == [r for r in slow if isinstance(r, Attempt)]
    assert [(d.raw, d.reason) for _, d in dead] == [(r.raw, r.reason) for r in slow if isinstance(r, DeadLetter)]
    assert one.pending == two.pending


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_never_raises(data):
    r = parser().feed(data, "0")
    assert r is None or isinstance(r, Attempt | DeadLetter)
    if isinstance(r, DeadLetter):
        assert r.reason and r.raw == data


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(GOOD_LINES | st.just("{t}|{c}|hotline|NONE|ENTERQUEUE||{n}|{p}|Zh\xe1ng"),
                          st.integers(0, 10**10), st.sampled_from(["u.1", "u.2", "u.3", ""]),
                          st.sampled_from(["13812345678", "01062345678", "", "1000", "anonymous"]),
                          st.integers(0, 9), st.integers(0, 600)), min_size=1, max_size=40))
def test_rows_from_a_block_equal_the_attempts_line_by_line(items):
    """feed_rows on the file's bytes as read (one block, maybe not ASCII) = feed, line by line."""
    lines = [tpl.format(t=t, c=c, n=n, p=p, w=w).encode("latin-1") for tpl, t, c, n, p, w in items]
    one = parser()
    slow = feed_all(one, lines)
    two = parser()
    rows, dead = two.feed_rows(b"\n".join(lines))
    assert rows == [(a.system, a.call_id, a.caller, a.number, a.started_ts, a.ended_ts, a.outcome.value, a.reason,
                     a.wait_seconds, a.queue, a.origin.value, a.origin.rank) for a in slow if isinstance(a, Attempt)]
    assert all(type(v) in (str, int, type(None)) for r in rows for v in r)  # plain values, no enums
    assert [(lines[i], d.raw, d.reason) for i, d in dead] == [
        (r.raw, r.raw, r.reason) for r in slow if isinstance(r, DeadLetter)]
    assert one.pending == two.pending


def test_the_rows_of_a_block_share_one_object_per_queue_name():
    """marshal (the parse worker's hand-off) writes an object it has seen as a 5-byte reference."""
    import marshal

    lines = []
    for i in range(200):
        t, q = 1_700_000_000 + 60 * i, ("hotline", "sales")[i % 2]
        if i % 10:
            lines.append(f"{t}|u.{i}|{q}|NONE|ENTERQUEUE||1381234{i:04d}|1")
        lines.append(f"{t + 9}|u.{i}|{q}|NONE|{'CONNECT|9|u.x|1' if i % 3 else 'ABANDON|1|1|9'}")  # some with no ENTER
    rows, dead = parser().feed_rows("\n".join(lines).encode())
    assert dead == [] and len(rows) == 200
    assert {r[9] for r in rows} == {"hotline", "sales"}
    assert len({id(r[9]) for r in rows}) == 2
    assert marshal.loads(marshal.dumps(rows)) == rows
    assert rows == [(a.system, a.call_id, a.caller, a.number, a.started_ts, a.ended_ts, a.outcome.value, a.reason,
                     a.wait_seconds, a.queue, a.origin.value, a.origin.rank)
                    for a in feed_all(parser(), lines) if isinstance(a, Attempt)]
