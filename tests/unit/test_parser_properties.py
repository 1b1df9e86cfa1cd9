"""Property tests of the queue_log and CDR parsers beyond "never raises" (test_queue_log.py, test_cdr.py)
and the round trips (test_parser_roundtrip.py): well-shaped lines with values at and past the limits -
huge numbers, far-off times, long call ids - give an attempt that fits the attempts table, or a dead
letter with a reason; never an attempt PostgreSQL refuses (that fails the whole batch, and the tail
retries the same batch for ever). The line-by-line and the batch (fast) paths agree on every line.

Bounded by the "ci" hypothesis profile (tests/conftest.py); CALLBACKD_FUZZ=full for the long run.
"""

from __future__ import annotations

import csv
import io

from hypothesis import given
from hypothesis import strategies as st

from callback_queue.attempts import Attempt, DeadLetter
from callback_queue.numbers import normalizer_from
from daemon.sources.cdr import CSV_LAYOUTS, CdrOptions, CdrParser
from daemon.sources.queue_log import QueueLogParser
from tests.support.storable import unstorable

NORM = normalizer_from("CN", 5, [], [])

numbers = st.one_of(st.integers(0, 10**6), st.integers(0, 10**30), st.sampled_from([2**31 - 1, 2**31, 2**63 - 1,
                                                                                      2**63, 253402300799]))
digits = st.one_of(numbers.map(str), st.just("9" * 5000))   # int() refuses more than 4,300 digits
callids = st.one_of(st.builds(lambda a, b: f"{a}.{b}", st.integers(10**9, 4 * 10**9), st.integers(0, 99)),
                    st.integers(100, 300).map(lambda n: "u" * n), st.just("x" * 128), st.just("y" * 129))
TEMPLATES = [
    "{t}|{c}|q|NONE|ENTERQUEUE||13812345678|{p}", "{t}|{c}|q|NONE|ABANDON|{p}|{p}|{w}",
    "{t}|{c}|q|NONE|EXITWITHTIMEOUT|{p}|{p}|{w}", "{t}|{c}|q|PJSIP/1|CONNECT|{w}|x.1|{p}",
    "{t}|{c}|q|NONE|EXITWITHKEY|5|{p}|{p}|{w}", "{t}|{c}|q|NONE|EXITEMPTY|{p}|{p}|{w}",
    "{t}|{c}|q|PJSIP/1|COMPLETECALLER|{w}|{w}|{p}", "{t}.5|{c}|q|NONE|ABANDON|1|1|{w}",
]
ql_lines = st.lists(st.tuples(st.sampled_from(TEMPLATES), digits, callids, digits, digits), min_size=1,
                    max_size=12).map(lambda items: [tpl.format(t=t, c=c, p=p, w=w).encode()
                                                    for tpl, t, c, p, w in items])


def _checked(results: list[Attempt | DeadLetter | None], lines: list[bytes]) -> list[Attempt]:
    out = []
    for line, r in zip(lines, results, strict=True):
        assert r is None or isinstance(r, Attempt | DeadLetter), r
        if isinstance(r, DeadLetter):
            assert r.reason and r.raw == line
        elif isinstance(r, Attempt):
            assert unstorable(r) == [], (line, r, unstorable(r))
            out.append(r)
    return out


@given(ql_lines)
def test_queue_log_attempts_always_fit_the_table(lines: list[bytes]) -> None:
    slow = QueueLogParser(source="ql", system="pbx", normalizer=NORM)
    one_by_one = _checked([slow.feed(line, str(i)) for i, line in enumerate(lines)], lines)
    fast = QueueLogParser(source="ql", system="pbx", normalizer=NORM)
    attempts, dead = fast.feed_many(lines)
    assert attempts == one_by_one
    assert all(unstorable(a) == [] for a in attempts)
    assert all(d.reason and d.raw == lines[i] for i, d in dead)


def test_queue_log_values_past_the_limits_are_dead_letters() -> None:
    """Found by the property above: a 20-digit time made an attempt SQLite cannot bind (OverflowError)
    and PostgreSQL refuses (bigint out of range); an 11-digit wait, one it refuses as integer."""
    cases = {
        b"99999999999999999999|u.1|q|NONE|ABANDON|1|1|5": "time",
        b"1700000000|u.2|q|NONE|ABANDON|1|1|99999999999": "data3",
        b"1700000000|" + b"u" * 129 + b"|q|NONE|ABANDON|1|1|5": "callid",
        b"1700000000|" + b"u" * 129 + b"|q|NONE|ENTERQUEUE||13812345678|1": "callid",
    }
    for line, word in cases.items():
        r = QueueLogParser(source="ql", system="pbx", normalizer=NORM).feed(line, "x:1")
        assert isinstance(r, DeadLetter) and word in r.reason, (line, r)
        attempts, dead = QueueLogParser(source="ql", system="pbx", normalizer=NORM).feed_many([line])
        assert attempts == [] and [d.reason for _, d in dead] == [r.reason]


CDR_WIDTH = 17   # cdr_csv with uniqueid
cdr_fields = st.fixed_dictionaries({
    "start": st.sampled_from(["2026-11-27 10:00:00", "9999-12-31 23:59:59", "0001-01-01 00:00:00",
                              "1970-01-01 00:00:00"]),
    "duration": digits, "billsec": digits, "uniqueid": callids,
    "disposition": st.sampled_from(["ANSWERED", "NO ANSWER", "BUSY", "FAILED"]),
    "dstchannel": st.sampled_from(["", "PJSIP/8001-00000002"]),
})


def _cdr_line(v: dict[str, str]) -> bytes:
    values = {"accountcode": "", "src": "13812345678", "dst": "12345", "dcontext": "from-pstn",
              "clid": '"" <13812345678>', "channel": "PJSIP/trunk-1", "lastapp": "Queue", "lastdata": "hotline,tT",
              "answer": "", "end": "", "amaflags": "DOCUMENTATION", **v}
    row = [""] * CDR_WIDTH
    for name, i in CSV_LAYOUTS[CDR_WIDTH].items():
        row[i] = values.get(name, "")
    out = io.StringIO()
    csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="").writerow(row)
    return out.getvalue().encode()


@given(st.lists(cdr_fields, min_size=1, max_size=6))
def test_cdr_attempts_always_fit_the_table(records: list[dict[str, str]]) -> None:
    lines = [_cdr_line(r) for r in records]
    p = CdrParser(source="cdr", system="pbx", normalizer=NORM, options=CdrOptions())
    results = [p.feed(line, f"Master.csv:{i}") for i, line in enumerate(lines)]
    _checked(results, lines)
    for r in results:
        assert not (isinstance(r, DeadLetter) and r.reason.startswith("CDR parser error")), r.reason


def test_cdr_values_past_the_limits_are_dead_letters() -> None:
    base = {"start": "2026-11-27 10:00:00", "duration": "30", "billsec": "0", "uniqueid": "1.1",
            "disposition": "NO ANSWER", "dstchannel": ""}
    p = CdrParser(source="cdr", system="pbx", normalizer=NORM, options=CdrOptions())
    assert isinstance(p.feed(_cdr_line(base), "1"), Attempt)
    for change, word in (({"duration": "99999999999"}, "duration"), ({"uniqueid": "u" * 129}, "uniqueid")):
        r = p.feed(_cdr_line({**base, **change}), "2")
        assert isinstance(r, DeadLetter) and word in r.reason, r
