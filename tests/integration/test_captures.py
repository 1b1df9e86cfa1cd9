"""The real Asterisk 22 captures (shared/asterisk/captures) through the import pipeline.

Each step's queue_log and CDR slice go through `daemon.sources.pipeline.import_file` with the
parsers the daemon builds from its settings (`daemon.app`), into a fresh store on SQLite and
PostgreSQL; then the whole run (captures/queue_log + Master.csv) is checked against the callbacks
a careful reader of the files expects.

Numbers: the captures use 7-digit numbers such as 5550101. `default_region = "US"` turns them into
+1 5550101 (phonenumbers keeps them in that stable form), and `internal_max_digits = 5` keeps them
while the 4-digit hotline/agent numbers (1000, 200) stay internal. CDR times are UTC in the
captures (09:40:22 is the epoch 1795772422), so the CDR source gets `timezone = "UTC"`, and its
inbound context is the capture dialplan's `hotline-did` (not in the settings' default list).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from callback_queue import schema as t
from callback_queue.clock import FakeClock
from callback_queue.ingest import Ingestor
from callback_queue.store import Store
from daemon.app import cdr_parser, detect_rules, normalizer, queue_log_parser
from daemon.settings import Settings
from daemon.sources.pipeline import import_file


def _captures_dir() -> Path:
    # the same lookup as tests/conftest.py::shared_dir (conftest is not importable as a module:
    # tests/ has no __init__.py); needed at collection time to parametrize over the steps
    env = os.environ.get("CALLBACKD_SHARED")
    root = Path(__file__).resolve().parents[2]
    for c in ([Path(env)] if env else [root.parent / "shared", root.parent.parent / "shared"]):
        if (c / "asterisk" / "captures").is_dir():
            return c / "asterisk" / "captures"
    raise RuntimeError("shared/asterisk/captures not found; set CALLBACKD_SHARED")


CAPTURES = _captures_dir()
STEPS = sorted(p.name.removesuffix(".queue_log") for p in (CAPTURES / "steps").glob("*.queue_log"))

#: just after the capture's last line (1795772632 = 09:43:52 UTC)
AFTER_CAPTURE = datetime(2026, 11, 27, 9, 44, tzinfo=UTC)


def at(h: int, m: int, s: int) -> datetime:
    """A time on the capture day, UTC."""
    return datetime(2026, 11, 27, h, m, s, tzinfo=UTC)


def settings(*, min_wait: int = 5, threshold: int = 3) -> Settings:
    return Settings.model_validate({
        "daemon": {"timezone": "UTC"},
        "detect": {"threshold": threshold, "lookback": "24h", "min_wait_seconds": min_wait,
                   "default_region": "US", "internal_max_digits": 5},
        "sources": {
            "queue_log": {"path": str(CAPTURES / "queue_log"), "system": "pbx"},
            "cdr": {"path": str(CAPTURES / "Master.csv"), "system": "pbx", "timezone": "UTC",
                    "inbound_contexts": ["hotline-did"]},
        },
    })


def import_files(store: Store, clock: FakeClock, s: Settings, files: list[Path]) -> None:
    """Import files in this order; the kind is told by the name (.queue_log / queue_log vs .csv)."""
    norm = normalizer(s)
    ingestor = Ingestor(store, clock, detect_rules(s))
    for path in files:
        parser = cdr_parser(s, norm) if path.name.endswith(".csv") else queue_log_parser(s, norm)
        import_file(path, parser, ingestor)


def attempts(store: Store) -> list[tuple[Any, ...]]:
    """(call_id, number, outcome, reason, wait_seconds, started_ts), in event order."""
    a = t.attempts
    with store.read() as c:
        rows = c.execute(sa.select(a.c.call_id, a.c.number, a.c.outcome, a.c.reason, a.c.wait_seconds,
                                   a.c.started_ts)).all()
    return sorted((tuple(r) for r in rows), key=lambda r: (r[5], r[0]))


def full_attempts(store: Store) -> list[tuple[Any, ...]]:
    """Every column but the surrogate id."""
    a = t.attempts
    with store.read() as c:
        return sorted(tuple(r) for r in c.execute(sa.select(*[col for col in a.columns if col.name != "id"])))


def callbacks(store: Store) -> dict[str, tuple[Any, ...]]:
    """number -> (state, failures, episode_start, triggered_at, last_failed_at, linked call ids)."""
    cb, link, a = t.callbacks, t.callback_attempts, t.attempts
    with store.read() as c:
        rows = c.execute(sa.select(cb.c.id, cb.c.number, cb.c.state, cb.c.failures, cb.c.episode_start,
                                   cb.c.triggered_at, cb.c.last_failed_at)).all()
        linked: dict[int, list[str]] = {}
        for cid, call_id in c.execute(sa.select(link.c.callback_id, a.c.call_id)
                                      .join(a, a.c.id == link.c.attempt_id)):
            linked.setdefault(cid, []).append(call_id)
    out = {r.number: (r.state, r.failures, r.episode_start, r.triggered_at, r.last_failed_at,
                      sorted(linked.get(r.id, []))) for r in rows}
    assert len(out) == len(rows), "two callbacks for one number"
    return out


def dead_letters(store: Store) -> list[tuple[Any, ...]]:
    d = t.dead_letters
    with store.read() as c:
        return [tuple(r) for r in c.execute(sa.select(d.c.position, d.c.reason))]


def wipe(store: Store) -> None:
    with store.write() as c:
        for table in reversed(t.metadata.sorted_tables):
            c.execute(table.delete())


# -- every step: queue_log + CDR slice → attempts ---------------------------------------------------

_NONE: list[tuple[Any, ...]] = []

#: step -> the attempts table after importing its .queue_log and .cdr.csv, in either order:
#: (call_id, E.164 number, outcome, reason, wait_seconds, started_ts). queue_log outranks the CDR,
#: so reason, wait and start are queue_log's: wait is its waittime (holdtime for CONNECT), the
#: start is the ENTERQUEUE time (the CDR start is the channel's creation, a second earlier at times).
EXPECTED_STEPS: dict[str, list[tuple[Any, ...]]] = {
    # CDR says ANSWERED (the dialplan answered before Queue(); billsec 5 is time in queue) and the CDR
    # parser alone calls it an abandon; queue_log EXITWITHTIMEOUT|1|1|5 is the authority: a timeout
    "01_inbound_timeout": [("1795772422.1", "+15550101", "failed", "timeout", 5, 1795772422)],
    # ABANDON|1|1|1: the caller hung up after 1 s in the queue (CDR duration 2 counts from the answer)
    "02_inbound_abandon": [("1795772431.3", "+15550202", "failed", "abandon", 1, 1795772432)],
    # TIMEOUT(absolute)=2 kills the queue leg: app_queue logs it as ABANDON|1|1|2, not a timeout
    "03_inbound_abandon_ctx": [("1795772437.5", "+15550505", "failed", "abandon", 2, 1795772438)],
    # queued before answer: CDR NO ANSWER (empty answer column), queue_log EXITWITHTIMEOUT|1|1|5
    "04_inbound_ring_timeout": [("1795772444.7", "+15550606", "failed", "timeout", 5, 1795772444)],
    # caller gave up while ringing: CDR NO ANSWER, queue_log ABANDON|1|1|2
    "05_inbound_ring_abandon": [("1795772454.9", "+15550606", "failed", "abandon", 2, 1795772454)],
    # two NO ANSWER CDRs of the caller leg (one per agent ring) and two agent-leg CDRs (dcontext
    # agents, not inbound) make one attempt; RINGNOANSWER is per-ring noise; EXITWITHTIMEOUT decides
    "06_inbound_agent_noanswer": [("1795772460.11", "+15550808", "failed", "timeout", 5, 1795772461)],
    # RINGCANCELED is noise; ABANDON|1|1|1 ends the visit; the agent leg's FAILED CDR is not inbound
    "07_inbound_agent_noanswer_abandon": [("1795772469.17", "+15550909", "failed", "abandon", 1, 1795772470)],
    # CONNECT|1|…|1 (holdtime 1): reached Agent 100; the agent-leg CDR (src = citizen) is not an attempt
    "08_inbound_answered_staffed": [("1795772475.21", "+15550303", "connected", "connect", 1, 1795772476)],
    # CONNECT with the per-call agent 101 in `hotline`; ADDMEMBER/REMOVEMEMBER are member admin
    "09_inbound_answered_hotline": [("1795772484.25", "+15550303", "connected", "connect", 1, 1795772485)],
    # 10-21 are outbound callbacks: empty queue_log slices, and every CDR is in citizens, agents,
    # callback_to_citizen, callback_to_agent or nosuchcontext (src 1000 = the hotline): no inbound call
    "10_callback_answer": _NONE,
    "11_callback_noanswer": _NONE,
    "12_callback_reject": _NONE,
    "13_callback_busy": _NONE,
    "14_callback_congestion": _NONE,
    "15_callback_invalid": _NONE,
    "16_callback_citizen_first": _NONE,
    "17_callback_agent_first": _NONE,
    "18_callback_agent_first_busy": _NONE,  # includes the 0-second ANSWERED record of the failed Dial
    "19_callback_agent_first_noanswer": _NONE,
    "20_callback_agent_noanswer": _NONE,
    "21_callback_channelid": _NONE,  # uniqueids are the ChannelIds (cb-plain-…), still outbound
    # the story: A = 5550101 times out 3×, B = 5550202 abandons 2× after 1 s at position 2,
    # C = 5550303 times out, is answered by Agent 101, times out, abandons after 1 s. Every CDR of a
    # timeout says ANSWERED (dialplan answer); queue_log decides. Interleaved, so the order is by start.
    "22_mixed_story": [
        ("1795772596.63", "+15550101", "failed", "timeout", 5, 1795772597),   # A1
        ("1795772599.65", "+15550202", "failed", "abandon", 1, 1795772600),   # B1  ABANDON|2|2|1
        ("1795772602.67", "+15550303", "failed", "timeout", 5, 1795772603),   # C1
        ("1795772605.69", "+15550101", "failed", "timeout", 5, 1795772606),   # A2  EXITWITHTIMEOUT|1|2|5
        ("1795772608.71", "+15550202", "failed", "abandon", 1, 1795772609),   # B2
        ("1795772611.73", "+15550101", "failed", "timeout", 5, 1795772612),   # A3
        ("1795772618.75", "+15550303", "connected", "connect", 1, 1795772618),  # C2 answered by 101
        ("1795772624.79", "+15550303", "failed", "timeout", 5, 1795772624),   # C3
        ("1795772630.81", "+15550303", "failed", "abandon", 1, 1795772631),   # C4
    ],
}


def test_every_step_has_expectations() -> None:
    assert STEPS, f"no steps found in {CAPTURES / 'steps'}"
    assert sorted(EXPECTED_STEPS) == STEPS


@pytest.mark.parametrize("step", STEPS)
def test_step_attempts(step: str, store: Store, clock: FakeClock) -> None:
    """The step's queue_log and CDR slice, imported in either order, give the expected attempts:
    queue_log is the authority whichever file comes first, down to every column."""
    if step not in EXPECTED_STEPS:
        pytest.fail(f"new capture step {step}: write its expected attempts into EXPECTED_STEPS")
    ql = CAPTURES / "steps" / f"{step}.queue_log"
    cdr = CAPTURES / "steps" / f"{step}.cdr.csv"
    assert cdr.is_file(), f"{cdr} is missing"
    full = {}
    for order, files in (("queue_log first", [ql, cdr]), ("CDR first", [cdr, ql])):
        wipe(store)
        import_files(store, clock, settings(), files)
        assert attempts(store) == EXPECTED_STEPS[step], order
        assert dead_letters(store) == [], order  # real Asterisk output has nothing malformed
        full[order] = full_attempts(store)
    assert full["CDR first"] == full["queue_log first"]


# -- CDR alone ------------------------------------------------------------------------------------------

#: Master.csv alone: the CDR parser's view. It cannot tell a queue timeout from a hang-up (both are
#: ANSWERED without an agent → "abandon"), pre-answer queueing is NO ANSWER, and a connected call is
#: ANSWERED with an agent dstchannel and billsec > 0 (wait None: billsec counts from the dialplan's
#: answer). wait is the CDR duration; started_ts the CDR start.
EXPECTED_CDR_ONLY: list[tuple[Any, ...]] = [
    ("1795772422.1", "+15550101", "failed", "abandon", 5, 1795772422),     # 01: queue_log says timeout
    ("1795772431.3", "+15550202", "failed", "abandon", 2, 1795772431),     # 02
    ("1795772437.5", "+15550505", "failed", "abandon", 2, 1795772437),     # 03
    ("1795772444.7", "+15550606", "failed", "no-answer", 5, 1795772444),   # 04: queue_log says timeout
    ("1795772454.9", "+15550606", "failed", "no-answer", 2, 1795772454),   # 05: queue_log says abandon
    # 06: two NO ANSWER records (one per agent ring) merge into one attempt; its wait is checked by
    # test_cdr_split_caller_leg_keeps_its_whole_wait
    ("1795772460.11", "+15550808", "failed", "no-answer", None, 1795772460),
    ("1795772469.17", "+15550909", "failed", "no-answer", 2, 1795772469),  # 07: dstchannel set, NO ANSWER
    ("1795772475.21", "+15550303", "connected", "connect", None, 1795772475),  # 08
    ("1795772484.25", "+15550303", "connected", "connect", None, 1795772484),  # 09
    ("1795772596.63", "+15550101", "failed", "abandon", 5, 1795772596),    # 22 A1 (a timeout)
    ("1795772599.65", "+15550202", "failed", "abandon", 2, 1795772599),    # 22 B1
    ("1795772602.67", "+15550303", "failed", "abandon", 5, 1795772602),    # 22 C1 (a timeout)
    ("1795772605.69", "+15550101", "failed", "abandon", 5, 1795772605),    # 22 A2
    ("1795772608.71", "+15550202", "failed", "abandon", 2, 1795772608),    # 22 B2
    ("1795772611.73", "+15550101", "failed", "abandon", 5, 1795772611),    # 22 A3
    ("1795772618.75", "+15550303", "connected", "connect", None, 1795772618),  # 22 C2
    ("1795772624.79", "+15550303", "failed", "abandon", 5, 1795772624),    # 22 C3 (a timeout)
    ("1795772630.81", "+15550303", "failed", "abandon", 2, 1795772630),    # 22 C4
]


def test_cdr_only_master_csv(store: Store, clock: FakeClock) -> None:
    import_files(store, clock, settings(), [CAPTURES / "Master.csv"])
    got = attempts(store)
    # the outbound callbacks (steps 10-21) and every agent leg leave no attempt: 18 inbound calls
    assert [r[:4] + r[5:] for r in got] == [r[:4] + r[5:] for r in EXPECTED_CDR_ONLY]
    assert [r[4] for r in got if r[0] != "1795772460.11"] == [
        r[4] for r in EXPECTED_CDR_ONLY if r[0] != "1795772460.11"]
    assert dead_letters(store) == []


def test_cdr_split_caller_leg_keeps_its_whole_wait(store: Store, clock: FakeClock) -> None:
    """Step 06 alone from the CDR: the caller leg is split into one NO ANSWER record per agent ring,
    09:41:00-09:41:04 (duration 3) and 09:41:05-09:41:06 (duration 1). The caller waited the whole
    time; the stored wait must cover at least both records (3 + 1), not the last record alone."""
    import_files(store, clock, settings(), [CAPTURES / "steps" / "06_inbound_agent_noanswer.cdr.csv"])
    [row] = attempts(store)
    assert row[:4] == ("1795772460.11", "+15550808", "failed", "no-answer")
    assert row[5] == 1795772460  # the first record's start
    assert row[4] is not None and row[4] >= 3 + 1, f"wait_seconds {row[4]} is only the last record's duration"


# -- the whole run: which callbacks open ----------------------------------------------------------------

# Reading captures/queue_log (the authority) with threshold 3, lookback 24h, now = 09:44:00:
#   +15550101  EXITWITHTIMEOUT 09:40:22 (step 01), then 3× EXITWITHTIMEOUT in step 22 (ENTERQUEUE
#              09:43:17, :26, :32) and never connected: 4 failures in a row. The third (09:43:26) opens
#              the callback, the fourth grows it: pending, failures 4, episode from 09:40:22.
#   +15550202  ABANDON after 1 s at 09:40:32, 09:43:20, 09:43:29: with min_wait_seconds=5 each is a
#              misdial and nothing counts; with min_wait_seconds=0 they are 3 failures → one callback
#              triggered by the third (09:43:29).
#   +15550303  connected 09:41:16 (08) and 09:41:25 (09); in 22 a timeout (09:43:23), then connected
#              (09:43:38), then a timeout (09:43:44) and a 1-s abandon (09:43:51): at most 2 in a row.
#   +15550606  a timeout (09:40:44) and a 2-s abandon (09:40:54): 1 or 2 failures, below 3.
#   +15550505, +15550808, +15550909: one failure each.
#   The CDR adds nothing: outbound legs and agent legs are not inbound, and its 18 inbound records are
#   the same calls (same uniqueids) with a lower rank.
A_CALLBACK = ("pending", 4, at(9, 40, 22), at(9, 43, 26), at(9, 43, 32),
              ["1795772422.1", "1795772596.63", "1795772605.69", "1795772611.73"])
B_CALLBACK = ("pending", 3, at(9, 40, 32), at(9, 43, 29), at(9, 43, 29),
              ["1795772431.3", "1795772599.65", "1795772608.71"])


@pytest.mark.parametrize(("min_wait", "expected"), [
    (5, {"+15550101": A_CALLBACK}),                         # B's 1-s abandons are misdials
    (0, {"+15550101": A_CALLBACK, "+15550202": B_CALLBACK}),  # every abandon counts
])
def test_full_capture_callbacks(min_wait: int, expected: dict[str, tuple[Any, ...]], store: Store) -> None:
    clock = FakeClock(AFTER_CAPTURE)
    import_files(store, clock, settings(min_wait=min_wait), [CAPTURES / "queue_log", CAPTURES / "Master.csv"])
    assert len(attempts(store)) == 18
    assert callbacks(store) == expected
    assert dead_letters(store) == []
    # the audit trail: one "opened" event per callback, at the trigger time, by the detector
    with store.read() as c:
        events = c.execute(sa.select(t.callback_events.c.event, t.callback_events.c.at,
                                     t.callback_events.c.actor, t.callbacks.c.number)
                           .join(t.callbacks, t.callbacks.c.id == t.callback_events.c.callback_id)).all()
    assert sorted((e.number, e.event, e.at, e.actor) for e in events) == sorted(
        (n, "opened", cb[3], "detector") for n, cb in expected.items())


@pytest.mark.parametrize("min_wait", [0, 5])
def test_full_capture_imported_two_days_later_opens_nothing(min_wait: int, store: Store) -> None:
    # the same history, imported when it is older than the 24-hour lookback
    clock = FakeClock(datetime(2026, 11, 29, 9, 44, tzinfo=UTC))
    import_files(store, clock, settings(min_wait=min_wait), [CAPTURES / "queue_log", CAPTURES / "Master.csv"])
    assert len(attempts(store)) == 18  # the history is stored...
    assert callbacks(store) == {}      # ...but opens nothing


@pytest.mark.parametrize("min_wait", [2, 5])
def test_import_order_does_not_change_callbacks(min_wait: int, store: Store) -> None:
    """queue_log outranks the CDR for attempts in either order; the callbacks built from them must
    not depend on which file came first either (detection is evaluated in event time).

    min_wait 2: the CDR says B's abandons lasted 2 s (counting from the dialplan's answer) where
    queue_log says 1 s. CDR first opens a callback for B; queue_log, arriving later, makes all three
    misdials, yet the callback stays. min_wait 5: the callbacks are the same ones, but episode_start
    and triggered_at keep the CDR's channel-start times instead of queue_log's ENTERQUEUE times.
    """
    s = settings(min_wait=min_wait)
    ql, cdr = CAPTURES / "queue_log", CAPTURES / "Master.csv"
    import_files(store, FakeClock(AFTER_CAPTURE), s, [ql, cdr])
    queue_log_first = (full_attempts(store), callbacks(store))
    wipe(store)
    import_files(store, FakeClock(AFTER_CAPTURE), s, [cdr, ql])
    cdr_first = (full_attempts(store), callbacks(store))
    with store.read() as c:
        reclassified = {n for (n,) in c.execute(sa.select(t.callbacks.c.number)
                                                .where(t.callbacks.c.outcome == "reclassified"))}
    assert cdr_first[0] == queue_log_first[0]  # the attempts agree, every column
    # A callback the CDR opened and queue_log then re-classified away is not deleted (it was in the
    # queue; the history keeps it) but cancelled with outcome 'reclassified', never worked.
    for number in reclassified:
        assert number not in queue_log_first[1] and cdr_first[1][number][0] == "cancelled"
        del cdr_first[1][number]
    assert reclassified == ({"+15550202"} if min_wait == 2 else set())
    assert cdr_first[1] == queue_log_first[1], (
        f"queue_log first: {_show(queue_log_first[1])}\n     CDR first: {_show(cdr_first[1])}")


def _show(cbs: dict[str, tuple[Any, ...]]) -> str:
    """number: state, failures, episode_start/triggered_at/last_failed_at as HH:MM:SS."""
    return "; ".join(f"{n} {c[0]} x{c[1]} episode {c[2]:%H:%M:%S} triggered {c[3]:%H:%M:%S} "
                     f"last {c[4]:%H:%M:%S}" for n, c in sorted(cbs.items())) or "(none)"
