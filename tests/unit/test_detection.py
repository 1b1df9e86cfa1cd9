"""Detection is pure: attempts in, actions out; evaluated in event time."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from callback_queue.attempts import Outcome
from callback_queue.detection import AttemptView, Cancel, DetectRules, Grow, Open, OpenEpisode, detect

NOW = 1_800_000_000
RULES = DetectRules(threshold=3, lookback_seconds=24 * 3600, min_wait_seconds=5)
_ids = itertools.count(1)


def a(ts: int, outcome: str = "failed", reason: str = "abandon", wait: int | None = 30) -> AttemptView:
    oc = Outcome.CONNECTED if outcome == "connected" else Outcome.FAILED
    n = next(_ids)
    return AttemptView(n, ts, f"call-{n:06d}", oc, "connect" if oc is Outcome.CONNECTED else reason, wait)


def run(attempts, open_episode=None, boundary=None, rules=RULES, now=NOW):
    return detect(sorted(attempts, key=lambda x: (x.started_ts, x.call_id)), now_ts=now, rules=rules,
                  open_episode=open_episode, closed_boundary_ts=boundary)


def test_three_failures_open_one_callback_at_the_third():
    calls = [a(NOW - 300), a(NOW - 200, reason="timeout"), a(NOW - 100)]
    [action] = run(calls)
    assert isinstance(action, Open)
    assert action.episode_start_ts == NOW - 300
    assert action.triggered_ts == NOW - 100
    assert action.failures == 3
    assert action.cancelled_by is None


def test_two_failures_open_nothing():
    assert run([a(NOW - 300), a(NOW - 200)]) == []


def test_a_connected_call_resets_the_streak():
    calls = [a(NOW - 500), a(NOW - 400), a(NOW - 300, "connected"), a(NOW - 200), a(NOW - 100)]
    assert run(calls) == []


def test_connected_after_the_third_failure_opens_and_cancels_in_event_time():
    calls = [a(NOW - 500), a(NOW - 400), a(NOW - 300), a(NOW - 200, "connected")]
    [action] = run(calls)
    assert isinstance(action, Open)
    assert action.cancelled_by is not None and action.cancelled_by.started_ts == NOW - 200


def test_more_failures_after_opening_grow_the_same_episode():
    calls = [a(NOW - 500), a(NOW - 400), a(NOW - 300), a(NOW - 200), a(NOW - 100)]
    [action] = run(calls)
    assert isinstance(action, Open) and action.failures == 5 and action.last_failed_ts == NOW - 100


def test_short_abandons_are_misdials():
    calls = [a(NOW - 500, wait=2), a(NOW - 400, wait=4), a(NOW - 300), a(NOW - 200)]
    assert run(calls) == []
    # a short *timeout* is not a misdial: only abandons are
    assert len(run([a(NOW - 300, reason="timeout", wait=1), a(NOW - 200), a(NOW - 100)])) == 1


def test_reasons_not_counted_are_ignored_but_do_not_reset():
    rules = DetectRules(threshold=3, count_reasons=frozenset({"abandon"}))
    calls = [a(NOW - 500), a(NOW - 400, reason="exitempty"), a(NOW - 300), a(NOW - 200)]
    [action] = run(calls, rules=rules)
    assert isinstance(action, Open) and action.failures == 3


def test_history_older_than_the_lookback_opens_nothing():
    day = 24 * 3600
    calls = [a(NOW - 3 * day), a(NOW - 3 * day + 60), a(NOW - 3 * day + 120)]
    assert run(calls) == []
    # two old ones and one recent: only the recent one counts
    assert run([a(NOW - day - 100), a(NOW - day - 50), a(NOW - 10)]) == []


def test_an_open_episode_grows_and_is_cancelled_by_a_later_connect():
    ep = OpenEpisode(callback_id=7, episode_start_ts=NOW - 500, failures=3)
    calls = [a(NOW - 500), a(NOW - 400), a(NOW - 300), a(NOW - 200), a(NOW - 100, "connected")]
    actions = run(calls, open_episode=ep)
    assert [type(x) for x in actions] == [Grow, Cancel]
    assert actions[0].failures == 4
    assert actions[1].callback_id == 7 and actions[1].by.started_ts == NOW - 100


def test_a_connect_before_the_open_episode_does_not_cancel_it():
    ep = OpenEpisode(callback_id=7, episode_start_ts=NOW - 300, failures=3)
    calls = [a(NOW - 400, "connected"), a(NOW - 300), a(NOW - 200), a(NOW - 100)]
    [grow] = run(calls, open_episode=ep)
    assert isinstance(grow, Grow) and grow.failures == 3


def test_failures_before_a_closed_callback_do_not_count_again():
    calls = [a(NOW - 500), a(NOW - 400), a(NOW - 300), a(NOW - 100), a(NOW - 50)]
    assert run(calls, boundary=NOW - 200) == []
    assert len(run([*calls, a(NOW - 10)], boundary=NOW - 200)) == 1


def test_two_episodes_in_one_batch():
    calls = [a(NOW - 900), a(NOW - 800), a(NOW - 700), a(NOW - 600, "connected"),
             a(NOW - 500), a(NOW - 400), a(NOW - 300)]
    first, second = run(calls)
    assert isinstance(first, Open) and first.cancelled_by is not None
    assert isinstance(second, Open) and second.cancelled_by is None and second.episode_start_ts == NOW - 500


outcomes = st.lists(st.tuples(st.integers(0, 3000), st.sampled_from(["failed", "connected"]),
                              st.integers(0, 60)), max_size=25)


@settings(max_examples=300, deadline=None)
@given(outcomes, st.integers(1, 24))
def test_batch_boundaries_do_not_change_the_result(events, cut):
    """Evaluating a prefix, applying what it says, then the whole: the same callbacks as one pass."""
    calls = sorted((a(NOW - 4000 + ts, oc, wait=w) for ts, oc, w in events), key=lambda x: (x.started_ts, x.call_id))
    one_pass = _simulate([calls])
    two_pass = _simulate([calls[:cut], calls])
    assert one_pass == two_pass


def _simulate(batches):
    """Apply actions the way the store does; return the callbacks as (start, state, failures)."""
    callbacks: list[dict] = []
    for batch in batches:
        open_cb = next((c for c in callbacks if c["state"] == "open"), None)
        closed = [c["closed"] for c in callbacks if c["state"] != "open"]
        ep = (OpenEpisode(callbacks.index(open_cb), open_cb["start"], open_cb["failures"], open_cb["start_call"])
              if open_cb else None)
        for act in run(batch, open_episode=ep, boundary=max(closed) if closed else None):
            if isinstance(act, Open):
                c = {"start": act.episode_start_ts, "failures": act.failures, "state": "open", "closed": None,
                     "start_call": act.start_call_id}
                if act.cancelled_by:
                    c.update(state="cancelled", closed=act.cancelled_by.started_ts)
                callbacks.append(c)
            elif isinstance(act, Grow):
                callbacks[act.callback_id]["failures"] = act.failures
            else:
                callbacks[act.callback_id].update(state="cancelled", closed=act.by.started_ts)
    return [(c["start"], c["state"], c["failures"]) for c in callbacks]
