"""Round trips: a valid queue_log or CDR line built from random valid fields parses back to those
fields. The bounded fuzz run of each parser in CI is these properties (fixed example counts) plus the
never-raises properties in test_queue_log.py and test_cdr.py."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from callback_queue.attempts import Attempt, Origin, Outcome
from callback_queue.numbers import normalizer_from
from daemon.sources.cdr import CSV_LAYOUTS, CUSTOM_LAYOUTS, CdrOptions, CdrParser
from daemon.sources.queue_log import QueueLogParser
from tests.support.model import e164_cn

SHANGHAI = ZoneInfo("Asia/Shanghai")
NORM = normalizer_from("CN", 5, [], [])

mobiles = st.builds(lambda p, n: f"1{p}{n:09d}", st.sampled_from("3456789"), st.integers(0, 10**9 - 1))
landlines = st.builds(lambda n: f"010{n}", st.integers(2 * 10**7, 9 * 10**7 - 1))
numbers = st.one_of(mobiles, landlines)
epochs = st.integers(1_000_000_000, 4_000_000_000)
callids = st.builds(lambda a, b: f"{a}.{b}", st.integers(10**9, 4 * 10**9), st.integers(0, 10**6))
# queue names Asterisk allows: no '|' (the separator), no line breaks, not blank
queue_names = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="|"),
                      min_size=1, max_size=20).filter(lambda s: s.strip() == s and s != "")
FAIL_LINES = {  # verb -> (reason, data fields for a wait w)
    "ABANDON": ("abandon", lambda w: f"1|3|{w}"),
    "EXITWITHTIMEOUT": ("timeout", lambda w: f"1|3|{w}"),
    "EXITEMPTY": ("exitempty", lambda w: f"1|3|{w}"),
    "EXITWITHKEY": ("exitwithkey", lambda w: f"5|1|3|{w}"),
    "WITHDRAW": ("withdraw", lambda w: f"1|3|{w}"),
}


def ql_parser(tz: ZoneInfo | None = None) -> QueueLogParser:
    return QueueLogParser(source="ql", system="pbx1", normalizer=NORM, tz=tz)


@settings(max_examples=400, deadline=None)
@given(ts=epochs, callid=callids, queue=queue_names, caller=numbers, wait=st.integers(0, 7200),
       verb=st.sampled_from(["CONNECT", *FAIL_LINES]), iso=st.booleans())
def test_queue_log_visit_round_trips(ts, callid, queue, caller, wait, verb, iso):
    end = ts + wait

    def when(t: int) -> str:
        if not iso:
            return str(t)
        return datetime.fromtimestamp(t, SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")  # realtime layout

    enter = f"{when(ts)}|{callid}|{queue}|NONE|ENTERQUEUE||{caller}|1"
    if verb == "CONNECT":
        close, outcome, reason = f"{when(end)}|{callid}|{queue}|PJSIP/8001|CONNECT|{wait}|{end}.9|4", \
            Outcome.CONNECTED, "connect"
    else:
        reason, data = FAIL_LINES[verb]
        close, outcome = f"{when(end)}|{callid}|{queue}|NONE|{verb}|{data(wait)}", Outcome.FAILED
    p = ql_parser(SHANGHAI if iso else None)
    assert p.feed(enter.encode(), "x:0") is None
    got = p.feed(close.encode(), "x:1")
    assert got == Attempt("pbx1", callid, caller, e164_cn(caller), ts, end, outcome, reason, wait, queue,
                          Origin.QUEUE_LOG)
    assert p.pending == {}


@settings(max_examples=200, deadline=None)
@given(visits=st.lists(st.tuples(callids, numbers, st.integers(0, 600), st.booleans()), min_size=1, max_size=12,
                       unique_by=lambda v: v[0]), start=epochs)
def test_interleaved_visits_round_trip_in_any_batching(visits, start):
    """Many calls in flight at once, fed one line at a time and as one batch: the same attempts."""
    lines: list[tuple[int, int, str]] = []
    for i, (callid, caller, wait, ok) in enumerate(visits):
        t = start + i
        lines.append((t, 0, f"{t}|{callid}|hotline|NONE|ENTERQUEUE||{caller}|1"))
        verb = f"CONNECT|{wait}|{t}.x|2" if ok else f"ABANDON|1|1|{wait}"
        lines.append((t + wait, 1, f"{t + wait}|{callid}|hotline|NONE|{verb}"))
    data = [ln.encode() for _, _, ln in sorted(lines)]
    p1 = ql_parser()
    singles = [r for d in data if (r := p1.feed(d, "")) is not None]
    batch, dead = ql_parser().feed_many(data)
    assert dead == []
    assert sorted(singles) == sorted(batch)
    want = {callid: (e164_cn(caller), start + i, Outcome.CONNECTED if ok else Outcome.FAILED, wait)
            for i, (callid, caller, wait, ok) in enumerate(visits)}
    assert {a.call_id: (a.number, a.started_ts, a.outcome, a.wait_seconds) for a in batch} == want


# -- CDR -------------------------------------------------------------------------------------------
def _cdr_time(t: int | None) -> str:
    return "" if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


names = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=15)
records = st.fixed_dictionaries({
    "src": numbers, "name": names, "start": epochs, "ring": st.integers(0, 60), "talk": st.integers(0, 3600),
    "disposition": st.sampled_from(["ANSWERED", "NO ANSWER", "BUSY", "FAILED", "CONGESTION"]),
    "agent": st.booleans(), "uniqueid": callids, "queue": st.sampled_from(["hotline", "12345-1", "q"]),
})
layouts = st.one_of(st.tuples(st.just("csv"), st.sampled_from(sorted(CSV_LAYOUTS))),
                    st.tuples(st.just("custom"), st.sampled_from(sorted(CUSTOM_LAYOUTS))))


def _cdr_line(r: dict, layout: str, width: int) -> tuple[bytes, Attempt]:
    answered = r["disposition"] == "ANSWERED"
    connected = answered and r["agent"] and r["talk"] > 0
    answer = r["start"] + r["ring"] if answered else None
    duration = r["ring"] + (r["talk"] if answered else 0)
    end = r["start"] + duration
    clid_name = r["name"].replace("\\", "")
    values = {
        "accountcode": "", "src": r["src"], "dst": "12345", "dcontext": "from-pstn",
        "clid": f'"{clid_name}" <{r["src"]}>', "channel": "PJSIP/trunk-00000001",
        "dstchannel": "PJSIP/8001-00000002" if r["agent"] else "", "lastapp": "Queue",
        "lastdata": f"{r['queue']},tT,,,300", "start": _cdr_time(r["start"]), "answer": _cdr_time(answer),
        "end": _cdr_time(end), "duration": str(duration), "billsec": str(r["talk"] if answered else 0),
        "disposition": r["disposition"], "amaflags": "DOCUMENTATION", "uniqueid": r["uniqueid"],
        "userfield": "", "peeraccount": "", "linkedid": r["uniqueid"], "sequence": "7",
    }
    mapping = (CSV_LAYOUTS if layout == "csv" else CUSTOM_LAYOUTS)[width]
    row = [""] * width
    for name, i in mapping.items():
        row[i] = values[name]
    out = io.StringIO()
    csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="").writerow(row)
    has_uid = "uniqueid" in mapping
    reason = "connect" if connected else {"ANSWERED": "abandon", "NO ANSWER": "no-answer", "BUSY": "busy",
                                          "FAILED": "failed", "CONGESTION": "congestion"}[r["disposition"]]
    if not connected and not r["agent"] and answer is None and duration == 0:
        reason = "refused"  # turned away at the queue's door (see cdr.py)
    want = Attempt("pbx1", r["uniqueid"] if has_uid else "", r["src"], e164_cn(r["src"]), r["start"], end,
                   Outcome.CONNECTED if connected else Outcome.FAILED, reason,
                   None if connected else duration, r["queue"], Origin.CDR)
    return out.getvalue().encode("utf-8"), want


@settings(max_examples=400, deadline=None)
@given(r=records, layout=layouts, auto=st.booleans())
def test_cdr_record_round_trips_in_every_layout(r, layout, auto):
    kind, width = layout
    line, want = _cdr_line(r, kind, width)
    p = CdrParser(source="cdr", system="pbx1", normalizer=NORM,
                  options=CdrOptions(layout="auto" if auto else kind))
    got = p.feed(line, "Master.csv:1")
    assert isinstance(got, Attempt), got
    if not want.call_id:  # layouts without a uniqueid column: a digest of the line
        assert got.call_id.startswith("cdr-") and len(got.call_id) == 28
        want = want._replace(call_id=got.call_id)
    assert got == want
