"""The reference model (tests/support/model.py): hand cases, then a cross-check against the real
ingest path (parser → Ingestor → store) on generated traffic cut into random batches."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime

import pytest

from callback_queue.attempts import Attempt, Origin, Outcome
from callback_queue.clock import FakeClock
from callback_queue.detection import DetectRules
from callback_queue.ingest import Ingestor
from callback_queue.numbers import normalizer_from
from callback_queue.store import Store
from daemon.sources.queue_log import QueueLogParser
from tests.support.dbcheck import model_mismatches, read_attempt_ids, read_callbacks
from tests.support.model import e164_cn, expected, read_gen_queue_log
from tests.support.traffic import queue_log_lines

NOW = 1_800_000_000
RULES = DetectRules(threshold=3, lookback_seconds=24 * 3600, min_wait_seconds=5)
N1, N2 = "+8613800000001", "+8613800000002"


def att(number: str, ts: int, outcome: str = "failed", reason: str = "abandon", wait: int | None = 30,
        call_id: str | None = None, origin: Origin = Origin.QUEUE_LOG) -> Attempt:
    oc = Outcome.CONNECTED if outcome == "connected" else Outcome.FAILED
    return Attempt("pbx", call_id or f"{ts}.{number[-4:]}", number, number, ts, ts + (wait or 0), oc,
                   "connect" if oc is Outcome.CONNECTED else reason, wait, "hotline", origin)


def test_three_counted_failures_owe_one_callback():
    exp = expected([att(N1, NOW - 300), att(N1, NOW - 200, reason="timeout"), att(N1, NOW - 100)], RULES, NOW)
    [e] = exp.episodes
    assert (e.number, e.episode_start_ts, e.triggered_ts, e.failures, e.cancelled_by) == (
        N1, NOW - 300, NOW - 100, 3, None)
    assert set(exp.owed) == {N1} and exp.cancelled == []


def test_two_failures_or_a_connect_between_owe_nothing():
    assert expected([att(N1, NOW - 300), att(N1, NOW - 200)], RULES, NOW).episodes == ()
    calls = [att(N1, NOW - 500), att(N1, NOW - 400), att(N1, NOW - 300, "connected"), att(N1, NOW - 200),
             att(N1, NOW - 100)]
    assert expected(calls, RULES, NOW).episodes == ()


def test_short_abandons_and_uncounted_reasons_neither_count_nor_break_the_streak():
    calls = [att(N1, NOW - 500), att(N1, NOW - 450, wait=2), att(N1, NOW - 400), att(N1, NOW - 350, wait=4),
             att(N1, NOW - 300, reason="withdraw")]
    rules = DetectRules(threshold=3, lookback_seconds=86400, min_wait_seconds=5,
                        count_reasons=frozenset({"abandon", "timeout"}))
    assert expected(calls, rules, NOW).episodes == ()
    [e] = expected([*calls, att(N1, NOW - 100, reason="timeout")], rules, NOW).episodes
    assert e.episode_start_ts == NOW - 500 and e.failures == 3


def test_a_connect_after_the_streak_cancels_and_a_new_streak_opens_a_second_episode():
    calls = [att(N1, NOW - 900 + 100 * i) for i in range(4)]
    calls += [att(N1, NOW - 450, "connected", call_id="ok-1")]
    calls += [att(N1, NOW - 300 + 100 * i) for i in range(3)]
    calls += [att(N2, NOW - 200), att(N2, NOW - 100)]
    exp = expected(calls, RULES, NOW)
    first, second = exp.episodes
    assert (first.failures, first.cancelled_by) == (4, "ok-1")
    assert (second.episode_start_ts, second.failures, second.cancelled_by) == (NOW - 300, 3, None)
    assert set(exp.owed) == {N1}


def test_history_older_than_the_lookback_opens_nothing_but_an_open_episode_keeps_growing():
    old = [att(N1, NOW - 90_000 + i) for i in range(0, 300, 100)]
    assert expected(old, RULES, NOW).episodes == ()
    mixed = [att(N1, NOW - 86_500), att(N1, NOW - 86_300), att(N1, NOW - 100)]
    assert expected(mixed, RULES, NOW).episodes == ()
    # a streak that started inside the lookback keeps its earliest failure
    inside = [att(N1, NOW - 86_000 + 100 * i) for i in range(3)]
    [e] = expected(inside, RULES, NOW).episodes
    assert e.episode_start_ts == NOW - 86_000


def test_one_call_seen_twice_is_one_attempt_and_queue_log_outranks_cdr():
    cdr_says_failed = att(N1, NOW - 300, reason="no-answer", call_id="c1", origin=Origin.CDR)
    ql_says_connected = att(N1, NOW - 300, "connected", call_id="c1")
    calls = [att(N1, NOW - 500, call_id="a"), att(N1, NOW - 400, call_id="b"), cdr_says_failed,
             att(N1, NOW - 400, call_id="b")]
    [e] = expected(calls, RULES, NOW).episodes
    assert e.failures == 3
    assert expected([*calls, ql_says_connected], RULES, NOW).episodes == ()


def test_reading_the_generator_layout():
    lines = ["100|100.1|hotline|NONE|ENTERQUEUE||13812345678|1",
             "110|100.1|hotline|NONE|ABANDON|1|1|10",
             "120|120.2|hotline|NONE|ENTERQUEUE||01062345678|1",
             "125|120.2|hotline|PJSIP/8000|CONNECT|5|125.3|2",
             "130|130.4|hotline|NONE|ENTERQUEUE||13812345678|1"]  # still waiting: not an attempt yet
    a, b = read_gen_queue_log(lines, "pbx")
    assert (a.call_id, a.number, a.started_ts, a.outcome, a.reason, a.wait_seconds) == (
        "100.1", "+8613812345678", 100, Outcome.FAILED, "abandon", 10)
    assert (b.number, b.outcome) == ("+861062345678", Outcome.CONNECTED)
    assert e164_cn("13812345678") == "+8613812345678"


# -- cross-check with the real ingest path -------------------------------------------------------
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_model_agrees_with_the_ingestor_however_the_traffic_is_batched(store_url: str, seed: int):
    now = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    now_ts = int(now.timestamp())
    lines = queue_log_lines(seed, 600, start_ts=now_ts - 8 * 3600, numbers=30)
    exp = expected(read_gen_queue_log(lines, "pbx"), RULES, now_ts)
    assert len(exp.owed) >= 3 and len(exp.cancelled) >= 3, "traffic too thin to prove anything"

    store = Store(store_url)
    try:
        ingestor = Ingestor(store, FakeClock(now), RULES)
        parser = QueueLogParser(source="ql", system="pbx", normalizer=normalizer_from("CN", 5, [], []))
        rng = random.Random(seed)
        i = 0
        while i < len(lines):
            n = rng.choice([1, 2, 5, 17, 60, 200])
            chunk = [ln.encode() for ln in lines[i:i + n]]
            attempts, dead = parser.feed_many(chunk)
            assert dead == []
            ingestor.ingest(attempts)
            i += n
        stored = read_attempt_ids(store_url)
        assert set(stored) == {a.call_id for a in read_gen_queue_log(lines, "pbx")}
        assert model_mismatches(exp, read_callbacks(store_url)) == []
    finally:
        store.dispose()


# Note on failure counts of closed episodes. A call that started before the caller got through but
# ended (and so was logged) after the connect reaches the daemon after the callback was cancelled;
# the closed-callback boundary (closed_at = the connect's start) then keeps it out, so the cancelled
# callback counts one failure fewer than the model, which evaluates the whole stream at once. It
# changes no decision (who is owed a callback), so model_mismatches tolerates a lower count (never
# below the threshold) on self-resolved episodes only; owed episodes must match exactly.
def test_a_failure_logged_after_the_connect_that_ended_the_episode(store_url: str):
    now = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    t = int(now.timestamp()) - 3600
    store = Store(store_url)
    try:
        ing = Ingestor(store, FakeClock(now), RULES)
        early = [att(N1, t + 100 * i, call_id=f"f{i}") for i in range(3)]
        long_wait = att(N1, t + 400, reason="timeout", wait=300, call_id="late")   # ends at t+700
        connect = att(N1, t + 500, "connected", wait=10, call_id="ok")             # ends at t+510
        ing.ingest(early)
        ing.ingest([connect])
        ing.ingest([long_wait])
        [cb] = read_callbacks(store_url)
        [e] = expected([*early, connect, long_wait], RULES, int(now.timestamp())).episodes
        assert (cb.state, cb.outcome, e.cancelled_by) == ("cancelled", "self-resolved", "ok")
        assert (cb.failures, e.failures) == (3, 4)
        assert model_mismatches(expected([*early, connect, long_wait], RULES, int(now.timestamp())),
                                read_callbacks(store_url)) == []
    finally:
        store.dispose()


def test_getting_through_then_a_new_streak_in_one_batch_keeps_both_episodes(store_url: str):
    """Found by the cross-check: an untouched callback was re-pointed at the next streak (its
    'opened' event rewritten) instead of being cancelled as self-resolved."""
    now = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    t = int(now.timestamp()) - 3600
    store = Store(store_url)
    try:
        ing = Ingestor(store, FakeClock(now), RULES)
        first = [att(N1, t + 100 * i, call_id=f"a{i}") for i in range(3)]
        later = [att(N1, t + 500, "connected", wait=10, call_id="ok")]
        later += [att(N1, t + 700 + 100 * i, call_id=f"b{i}") for i in range(3)]
        ing.ingest(first)
        ing.ingest(later)
        exp = expected([*first, *later], RULES, int(now.timestamp()))
        assert model_mismatches(exp, read_callbacks(store_url)) == []
        a, b = read_callbacks(store_url)
        assert (a.state, a.outcome, a.episode_start_ts) == ("cancelled", "self-resolved", t)
        assert (b.state, b.episode_start_ts) == ("pending", t + 700)
    finally:
        store.dispose()


def test_an_earlier_connect_logged_late_retracts_the_callback(store_url: str):
    """Overlapping calls are logged by their end: F F F(started after the connect) C(started first).
    In event order there never were three failures in a row; the daemon opens on what it has, then
    cancels unworked (outcome 'reclassified'), and the model check tolerates exactly that."""
    now = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    t = int(now.timestamp()) - 3600
    store = Store(store_url)
    try:
        ing = Ingestor(store, FakeClock(now), RULES)
        fails = [att(N1, t, call_id="f0"), att(N1, t + 300, call_id="f1"), att(N1, t + 1620, wait=19, call_id="f2")]
        connect = att(N1, t + 1610, "connected", wait=95, call_id="ok")
        ing.ingest(fails)
        ing.ingest([connect])
        exp = expected([*fails, connect], RULES, int(now.timestamp()))
        assert exp.episodes == ()
        [cb] = read_callbacks(store_url)
        assert (cb.state, cb.outcome, cb.dial_attempts) == ("cancelled", "reclassified", 0)
        assert model_mismatches(exp, [cb]) == []
        assert model_mismatches(exp, [dataclasses.replace(cb, state="pending")]) != []
        assert model_mismatches(exp, [dataclasses.replace(cb, dial_attempts=1)]) != []
    finally:
        store.dispose()


def test_a_retracted_callback_does_not_hide_the_callers_next_streak(store_url: str):
    """Found by crash seed 125121623: a retraction ('reclassified') is stamped with the wall clock, and
    that stamp was taken as the caller's last closed callback, so every later failure of an imported
    history (all older than 'now') was ignored and the next episodes were never opened."""
    now = datetime(2026, 11, 27, 22, 0, tzinfo=UTC)
    t = int(now.timestamp()) - 12 * 3600
    store = Store(store_url)
    try:
        ing = Ingestor(store, FakeClock(now), RULES)
        fails = [att(N1, t, call_id="f0"), att(N1, t + 300, call_id="f1"), att(N1, t + 1620, wait=19, call_id="f2")]
        connect = att(N1, t + 1610, "connected", wait=95, call_id="ok")
        later = [att(N1, t + 3600 + 100 * i, call_id=f"g{i}") for i in range(3)]
        got_through = att(N1, t + 4000, "connected", wait=10, call_id="ok2")
        ing.ingest(fails)
        ing.ingest([connect])
        ing.ingest(later)
        ing.ingest([got_through])
        exp = expected([*fails, connect, *later, got_through], RULES, int(now.timestamp()))
        assert len(exp.episodes) == 1
        assert model_mismatches(exp, read_callbacks(store_url)) == []
        retracted, episode = read_callbacks(store_url)
        # f2 started after the connect: it opens the next streak with g0 and g1
        assert (retracted.outcome, episode.outcome, episode.episode_start_ts) == ("reclassified", "self-resolved",
                                                                                  t + 1620)
    finally:
        store.dispose()
