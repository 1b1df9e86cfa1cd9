"""CDR parser: real captures of Asterisk 22.10.1 (shared/asterisk/captures) and variants built from them."""

from __future__ import annotations

import csv
import hashlib
import io
import os
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callback_queue.attempts import FAILURE_REASONS, Attempt, DeadLetter, Origin, Outcome
from callback_queue.numbers import normalizer_from
from daemon.sources.cdr import CdrOptions, CdrParser


def _shared_dir() -> Path:
    env = os.environ.get("CALLBACKD_SHARED")
    if env:
        return Path(env)
    # the repo and shared/ are siblings (/work/main + /work/shared; CI: <clone>/../shared)
    return Path(__file__).resolve().parents[2].parent / "shared"


CAPTURES = _shared_dir() / "asterisk" / "captures"

#: step 08, the caller leg (18 columns: cdr_csv with loguniqueid + loguserfield), verbatim
LINE_08 = (
    b'"","5550303","1003","hotline-did","""Citizen 5550303"" <5550303>",'
    b'"Local/5550303@inbound_answered-0000000a;2","Local/100@agents-0000000b;1","Queue",'
    b'"hotline_staffed,,,,20","2026-11-27 09:41:15","2026-11-27 09:41:15","2026-11-27 09:41:20",'
    b'5,5,"ANSWERED","DOCUMENTATION","1795772475.21",""'
)
CSV_HEADER = (
    "accountcode,src,dst,dcontext,clid,channel,dstchannel,lastapp,lastdata,start,answer,end,"
    "duration,billsec,disposition,amaflags,uniqueid,userfield"
)


def parser(**options: object) -> CdrParser:
    return CdrParser(
        source="cdr-test",
        system="pbx1",
        normalizer=normalizer_from("CN", 5, [], []),
        options=CdrOptions(**options),  # type: ignore[arg-type]
    )


def captures() -> Path:
    if not CAPTURES.is_dir():
        pytest.fail(f"captures not found at {CAPTURES}; set CALLBACKD_SHARED to the shared/ directory")
    return CAPTURES


def feed_file(path: Path, p: CdrParser | None = None) -> list[Attempt | DeadLetter | None]:
    p = p or parser()
    return [p.feed(line, f"{path.name}:{i}") for i, line in enumerate(path.read_bytes().splitlines(), 1)]


def step_file(number: int) -> Path:
    (path,) = sorted((captures() / "steps").glob(f"{number:02d}_*.cdr.csv"))
    return path


def fields(line: bytes) -> list[str]:
    return next(csv.reader([line.decode("latin-1")]))


def join(values: list[str]) -> bytes:
    out = io.StringIO()
    csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="").writerow(values)
    return out.getvalue().encode("latin-1")


def attempt(result: object) -> Attempt:
    assert isinstance(result, Attempt), result
    return result


# ---------------------------------------------------------------------------------------------
# real captures, step by step (CAPTURES.md "What the real captures show"); numbers are CN-region
# E.164 because the test normalizer's default region is CN (5550101 -> +865550101)

F, C = Outcome.FAILED, Outcome.CONNECTED
INBOUND = {
    # answered by the dialplan, Queue() timed out, then Hangup: lastapp Hangup, no dstchannel.
    # ANSWERED but nobody talked to the caller -> failed; a CDR cannot tell timeout from abandon
    1: {"1795772422.1": [(F, "abandon", "+865550101", 5, None)]},
    # answered by the dialplan, caller hung up in the queue: lastapp Queue, no agent
    2: {"1795772431.3": [(F, "abandon", "+865550202", 2, "hotline")]},
    # TIMEOUT(absolute) ended the queue leg: same shape as step 02
    3: {"1795772437.5": [(F, "abandon", "+865550505", 2, "hotline")]},
    # queued before answer (ringback), Queue() timeout: a true NO ANSWER, empty answer column
    4: {"1795772444.7": [(F, "no-answer", "+865550606", 5, None)]},
    # queued before answer, caller gave up after 2 s
    5: {"1795772454.9": [(F, "no-answer", "+865550606", 2, "hotline")]},
    # agent 301 rang twice, never answered: the answered caller leg is logged as NO ANSWER,
    # once per ring attempt (dstchannel = the agent leg); the agent legs (dcontext agents,
    # FAILED) are not inbound calls
    6: {"1795772460.11": [(F, "no-answer", "+865550808", 3, "hotline"),
                          (F, "no-answer", "+865550808", 1, "hotline")]},
    # caller hung up while agent 301 rang: NO ANSWER with a dstchannel; agent leg ignored
    7: {"1795772469.17": [(F, "no-answer", "+865550909", 2, "hotline")]},
    # Agent 100 answered: ANSWERED, dstchannel = agent leg, billsec 5 -> connected; the agent
    # leg's own CDR (dcontext agents, dst 100) is not an inbound call
    8: {"1795772475.21": [(C, "connect", "+865550303", None, "hotline_staffed")]},
    # Agent 101 answered in hotline: same as step 08
    9: {"1795772484.25": [(C, "connect", "+865550303", None, "hotline")]},
}


@pytest.mark.parametrize("step", sorted(INBOUND))
def test_inbound_steps(step: int) -> None:
    results = feed_file(step_file(step))
    assert not [r for r in results if isinstance(r, DeadLetter)]
    got: dict[str, list[tuple[object, ...]]] = {}
    for r in results:
        if r is None:
            continue
        a = attempt(r)
        got.setdefault(a.call_id, []).append((a.outcome, a.reason, a.number, a.wait_seconds, a.queue))
        assert a.system == "pbx1" and a.origin is Origin.CDR
        assert a.caller == a.number.removeprefix("+86")  # type: ignore[union-attr]
        # the capture PBX ran in UTC, so a record of the caller leg starts at its uniqueid's epoch
        assert a.started_ts == int(a.call_id.split(".")[0]) or step == 6
        assert a.ended_ts is not None and a.ended_ts >= a.started_ts
    assert got == INBOUND[step]


def test_step_06_records_are_one_call_per_ring_attempt() -> None:
    attempts = [attempt(r) for r in feed_file(step_file(6)) if r is not None]
    spans = [(a.started_ts, a.ended_ts) for a in attempts]
    assert spans == [(1795772460, 1795772464), (1795772465, 1795772466)]
    assert {a.call_id for a in attempts} == {"1795772460.11"}


@pytest.mark.parametrize("step", range(10, 22))
def test_outbound_callback_steps_give_no_attempts(step: int) -> None:
    # dcontexts citizens / callback_to_agent / callback_to_citizen / agents / nosuchcontext
    assert feed_file(step_file(step)) == [None] * len(step_file(step).read_bytes().splitlines())


def test_step_22_mixed_story() -> None:
    # A = 5550101 times out 3x, B = 5550202 abandons 2x, C = 5550303 has 4 calls, one answered
    by_number: dict[str, list[str]] = {}
    for r in feed_file(step_file(22)):
        if r is None:  # the agent leg of the answered call
            continue
        a = attempt(r)
        by_number.setdefault(a.number or "", []).append(a.reason)
    assert {n: sorted(v) for n, v in by_number.items()} == {
        "+865550101": ["abandon"] * 3,
        "+865550202": ["abandon"] * 2,
        "+865550303": ["abandon", "abandon", "abandon", "connect"],
    }


def test_master_csv_and_custom_give_the_same_attempts() -> None:
    # Master-custom.csv is 21 columns in cdr_csv order, every field quoted, tail linkedid,sequence,""
    pairs = {}
    for name in ("Master.csv", "Master-custom.csv"):
        results = feed_file(captures() / name)
        assert not [r for r in results if isinstance(r, DeadLetter)]
        pairs[name] = {(a.call_id, a.outcome, a.reason, a.started_ts, a.number)
                       for a in map(attempt, filter(None, results))}
    assert pairs["Master.csv"] == pairs["Master-custom.csv"]
    assert len(pairs["Master.csv"]) == 19
    steps = set()
    for path in sorted((captures() / "steps").glob("*.cdr.csv")):
        steps |= {(a.call_id, a.outcome) for a in map(attempt, filter(None, feed_file(path)))}
    assert {(c, o) for c, o, *_ in pairs["Master.csv"]} == steps


def test_line_08_is_the_capture_line() -> None:
    assert LINE_08 in step_file(8).read_bytes().splitlines()


# ---------------------------------------------------------------------------------------------
# layouts


def test_header_row_fixes_the_mapping_by_name() -> None:
    p = parser()
    assert p.feed(CSV_HEADER.encode(), "1") is None
    a = attempt(p.feed(LINE_08, "2"))
    assert (a.call_id, a.outcome, a.number) == ("1795772475.21", C, "+865550303")
    # a DB export: other order, calldate instead of start, NULL literals, a vendor column
    p = parser()
    assert p.feed(b"calldate,uniqueid,disposition,dst,dcontext,src,clid,dstchannel,billsec,"
                  b"duration,lastapp,lastdata,answer,end,vendor_x", "1") is None
    a = attempt(p.feed(b'2026-11-27 09:40:31,1795772431.3,NO ANSWER,1000,from-pstn,NULL,'
                       b'"""Citizen"" <13812345678>",NULL,0,2,Queue,"hotline,,,,5",NULL,NULL,x', "2"))
    assert (a.call_id, a.reason, a.number, a.wait_seconds, a.queue, a.ended_ts) == (
        "1795772431.3", "no-answer", "+8613812345678", 2, "hotline", None)
    dead = p.feed(LINE_08, "3")
    assert isinstance(dead, DeadLetter) and "18 fields; the header row has 15" in dead.reason


def test_header_without_needed_columns_is_dead() -> None:
    p = parser()
    dead = p.feed(b"clid,src,dst", "1")
    assert isinstance(dead, DeadLetter) and "dcontext" in dead.reason and "disposition" in dead.reason
    assert attempt(p.feed(LINE_08, "2")).call_id == "1795772475.21"  # mapping not changed


def test_16_17_21_column_variants() -> None:
    base = fields(LINE_08)
    line16 = join(base[:16])
    a16 = attempt(parser().feed(line16, "1"))
    assert a16.call_id == "cdr-" + hashlib.sha1(line16).hexdigest()[:24] and len(a16.call_id) == 28
    assert attempt(parser().feed(line16 + b"\r", "1")).call_id == a16.call_id
    assert attempt(parser().feed(join(base[:17]), "1")).call_id == "1795772475.21"
    line21 = join(base + ["", "1795772475.20", "24"])  # peeraccount, linkedid, sequence
    a21 = attempt(parser().feed(line21, "1"))
    assert (a21.call_id, a21.outcome, a21.queue) == ("1795772475.21", C, "hotline_staffed")
    assert attempt(parser(layout="csv").feed(line21, "1")) == a21


def test_stock_cdr_custom_order() -> None:
    f = dict(zip(["accountcode", "src", "dst", "dcontext", "clid", "channel", "dstchannel", "lastapp",
                  "lastdata", "start", "answer", "end", "duration", "billsec", "disposition",
                  "amaflags", "uniqueid", "userfield"], fields(LINE_08), strict=True))
    order = ["clid", "src", "dst", "dcontext", "channel", "dstchannel", "lastapp", "lastdata", "start",
             "answer", "end", "duration", "billsec", "disposition", "amaflags", "accountcode",
             "uniqueid", "userfield"]
    line = join([f[k] for k in order]) + b",24"  # sequence unquoted
    expected = attempt(parser().feed(LINE_08, "1"))
    assert attempt(parser().feed(line, "1")) == expected
    assert attempt(parser(layout="custom").feed(line, "1")) == expected
    # no clid to tell them apart: the start date's position decides
    f["clid"] = ""
    assert attempt(parser().feed(join([f[k] for k in order]) + b",24", "1")).call_id == "1795772475.21"
    dead = parser(layout="custom").feed(LINE_08, "1")
    assert isinstance(dead, DeadLetter) and "expected 19-21 (cdr_custom)" in dead.reason


def test_caller_from_clid_when_src_is_empty() -> None:
    f = fields(LINE_08)
    f[1] = ""
    a = attempt(parser().feed(join(f), "1"))
    assert (a.caller, a.number) == ("5550303", "+865550303")
    f[4] = '"" <>'  # empty caller ID
    a = attempt(parser().feed(join(f), "1"))
    assert (a.caller, a.number) == (None, None)
    f[4] = "+8613812345678"  # a number-only clid has no brackets
    assert attempt(parser().feed(join(f), "1")).number == "+8613812345678"


def test_latin1_bytes_in_clid_name_are_not_an_error() -> None:
    # FORMATS.md c.3 pitfall 6 (2024 sample): non-UTF-8 bytes in the caller-ID name
    line = LINE_08.replace(b'"5550303","1003"', b'"","1003"').replace(
        b'"""Citizen 5550303"" <5550303>"', b'"""8107924651\xa5\xa5b"" <13812345678>"')
    a = attempt(parser().feed(line, "1"))
    assert (a.caller, a.number) == ("13812345678", "+8613812345678")


def test_null_literals_mean_empty() -> None:
    f = fields(LINE_08)
    f[6], f[10], f[11], f[16], f[17] = "NULL", "NULL", "NULL", "NULL", "NULL"
    a = attempt(parser().feed(join(f), "1"))
    assert a.outcome is F and a.reason == "abandon"  # no agent channel
    assert a.ended_ts is None and a.call_id.startswith("cdr-")


def test_local_timezone_shifts_the_epoch() -> None:
    utc = attempt(parser().feed(LINE_08, "1"))
    local = attempt(parser(tz=ZoneInfo("Asia/Shanghai")).feed(LINE_08, "1"))
    assert utc.started_ts - local.started_ts == 8 * 3600
    assert utc.ended_ts - local.ended_ts == 8 * 3600  # type: ignore[operator]


def test_hotline_numbers_match_dst() -> None:
    line = LINE_08.replace(b'"hotline-did"', b'"from-internal"')
    assert parser().feed(line, "1") is None
    assert attempt(parser(hotline_numbers=frozenset({"1003"})).feed(line, "1")).call_id == "1795772475.21"


# ---------------------------------------------------------------------------------------------
# outcome rules


@pytest.mark.parametrize(("disposition", "reason"), [
    ("NO ANSWER", "no-answer"), ("BUSY", "busy"), ("CONGESTION", "congestion"), ("FAILED", "failed"),
    ("UNKNOWN", "failed"), ("CANCEL", "abandon"), ("ANSWERED", "connect"),
])
def test_dispositions(disposition: str, reason: str) -> None:
    a = attempt(parser().feed(LINE_08.replace(b'"ANSWERED"', f'"{disposition}"'.encode()), "1"))
    assert a.reason == reason and reason in FAILURE_REASONS + ("connect",)
    assert a.wait_seconds == (None if reason == "connect" else 5)


def test_answered_without_billsec_or_agent_is_not_connected() -> None:
    f = fields(LINE_08)
    f[13] = "0"
    assert attempt(parser().feed(join(f), "1")).reason == "abandon"
    f = fields(LINE_08)
    f[6], f[7], f[8] = "", "Playback", "welcome"  # IVR answered, caller hung up
    a = attempt(parser().feed(join(f), "1"))
    assert (a.outcome, a.reason, a.queue) == (F, "abandon", None)


def test_refused_at_the_queue_door() -> None:
    # never answered, last app Queue(hotline), no agent rung, 0 s: the join was refused
    f = fields(LINE_08)
    f[6], f[8], f[10], f[11], f[12], f[13], f[14] = "", "hotline", "", f[9], "0", "0", "NO ANSWER"
    a = attempt(parser().feed(join(f), "1"))
    assert (a.reason, a.wait_seconds, a.queue) == ("refused", 0, "hotline")


# ---------------------------------------------------------------------------------------------
# malformed input


@pytest.mark.parametrize(("line", "words"), [
    (b'"a","b","c","d","e","f","g","h","i"', "9 fields; expected 16-21 (cdr_csv) or 19-21 (cdr_custom)"),
    (LINE_08.replace(b'"ANSWERED"', b'"MAYBE"'), "unknown CDR disposition 'MAYBE'"),
    (LINE_08.replace(b'"2026-11-27 09:41:15","2026-11-27', b'"27/11/2026 09:41","2026-11-27'),
     "CDR start '27/11/2026 09:41'"),
    (LINE_08.replace(b'"2026-11-27 09:41:15","2026-11-27', b'"","2026-11-27'), "start time is empty"),
    (LINE_08.replace(b"5,5,", b"5,five,"), "CDR billsec 'five'"),
    (LINE_08.replace(b'"2026-11-27 09:41:20"', b'"2026-13-27 09:41:20"'), "CDR end '2026-13-27 09:41:20'"),
    (LINE_08.replace(b'"1003"', b'"10"03"'), "not valid CSV"),
])
def test_malformed_lines_are_dead_letters(line: bytes, words: str) -> None:
    dead = parser().feed(line, "Master.csv:7")
    assert isinstance(dead, DeadLetter)
    assert words in dead.reason
    assert (dead.source, dead.position, dead.raw) == ("cdr-test", "Master.csv:7", line)


def test_blank_lines_and_forced_csv_layout() -> None:
    assert parser().feed(b"", "1") is None and parser().feed(b"\r", "1") is None
    dead = parser(layout="csv").feed(b"a,b", "1")
    assert isinstance(dead, DeadLetter) and "2 fields; expected 16-21 (cdr_csv)" in dead.reason
    with pytest.raises(ValueError, match="layout"):
        CdrOptions(layout="xml")


# ---------------------------------------------------------------------------------------------
# never raises


def _check(result: object) -> None:
    assert result is None or isinstance(result, Attempt | DeadLetter)
    if isinstance(result, DeadLetter):
        assert result.reason and not result.reason.startswith("CDR parser error"), result.reason


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary())
def test_feed_never_raises_on_bytes(line: bytes) -> None:
    _check(parser().feed(line, "x"))


_FIELD = st.one_of(st.sampled_from(fields(LINE_08) + ["NULL", "", "0", "hotline-did", "Queue"]),
                   st.text(max_size=12))


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_FIELD, min_size=15, max_size=22), st.sampled_from(["auto", "csv", "custom"]))
def test_feed_never_raises_on_record_shaped_lines(values: list[str], layout: str) -> None:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(values)
    _check(parser(layout=layout).feed(out.getvalue().encode("utf-8", "surrogatepass"), "x"))
