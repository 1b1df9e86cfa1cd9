"""One callback can be followed through the log: opened (trigger call, failures), claimed, closed / retry
scheduled / unreachable, released, lease expired, cancelled (self-resolved or by someone), each at info with
its callback_id and who did it, after the commit, with numbers masked (DESIGN invariant 10); a claim of many
is one line. The daemon gives its queue and ingestor a logger; a CLI command's stay silent (its stdout is
its output)."""

from __future__ import annotations

from datetime import timedelta

from console_support import RULES
from console_support import failures as _failures
from structlog.testing import capture_logs

from callback_queue.attempts import Attempt, Origin, Outcome
from callback_queue.clock import FakeClock
from callback_queue.ingest import Ingestor
from callback_queue.queue import CallbackQueue
from callback_queue.retry import RetryPolicy
from callback_queue.store import Store
from daemon.logs import get_logger

NUMBER = "+8613812345678"


def queue(store: Store, clock: FakeClock, *args, **kw) -> CallbackQueue:
    q = CallbackQueue(store, clock, *args, **kw)
    q.log = get_logger("callbackd.queue")
    return q


def ingestor(store: Store, clock: FakeClock) -> Ingestor:
    ing = Ingestor(store, clock, RULES)
    ing.log = get_logger("callbackd.ingest")
    return ing


def failures(number: str, first, tag: str) -> list[Attempt]:
    """Three failures whose call ids do not hold the number (PBX call ids are "1700000000.42")."""
    return [a._replace(call_id=f"{tag}.{i}") for i, a in enumerate(_failures(number, first))]


def _lines(logs: list[dict], cid: int) -> list[tuple[str, str]]:
    return [(e["event"], e["log_level"]) for e in logs
            if e.get("callback_id") == cid or cid in e.get("callback_ids", [])]


def _no_whole_number(logs: list[dict]) -> None:
    for e in logs:
        assert all(NUMBER not in str(v) and "13812345678" not in str(v) for v in e.values()), e


def test_a_callback_followed_from_opened_to_closed(store: Store, clock: FakeClock) -> None:
    start = clock.now() - timedelta(hours=1)
    q = queue(store, clock, RetryPolicy(), lease=timedelta(minutes=5))
    with capture_logs() as logs:
        [cid] = ingestor(store, clock).ingest(failures(NUMBER, start, tag="a")).opened
        [c] = q.claim("otto")
        q.release(cid, "otto")
        q.claim("olga")
        clock.advance(timedelta(minutes=6))  # olga's lease runs out: the next claim gives it back first
        q.claim("otto")
        q.close(cid, "otto", "no-answer")
    opened = next(e for e in logs if e["event"] == "callback.opened")
    assert opened["callback_id"] == cid and opened["failures"] == 3 and opened["trigger_call_id"] == "a.2"
    assert opened["number"] == "+86138****5678" and opened["log_level"] == "info"
    claims = [e for e in logs if e["event"] == "callback.claimed"]
    assert [e["actor"] for e in claims] == ["otto", "olga", "otto"] and all(e["callback_id"] == cid for e in claims)
    assert [e for e in _lines(logs, cid)] == [
        ("callback.opened", "info"), ("callback.claimed", "info"), ("callback.released", "info"),
        ("callback.claimed", "info"), ("callback.lease_expired", "info"), ("callback.claimed", "info"),
        ("callback.retry_scheduled", "info")]
    retry = next(e for e in logs if e["event"] == "callback.retry_scheduled")
    assert retry["outcome"] == "no-answer" and retry["retry_at"] and retry["actor"] == "otto"
    _no_whole_number(logs)


def test_unreachable_cancelled_and_self_resolved(store: Store, clock: FakeClock) -> None:
    start = clock.now() - timedelta(hours=1)
    q = queue(store, clock, RetryPolicy(rules={}))
    with capture_logs() as logs:
        ids = ingestor(store, clock).ingest(failures(NUMBER, start, tag="a")
                                                   + failures("+8613900000002", start, tag="b")
                                                   + failures("+8613900000003", start, tag="c")).opened
        claimed = q.claim("otto", 2)
        one, two = (c.id for c in claimed)
        q.close(one, "otto", "no-answer")
        q.cancel(two, "ada", "wrong number")
        third = next(i for i in ids if i not in (one, two))
        got_through = Attempt("pbx", "ok-1", "+8613900000003", "+8613900000003", int(clock.now().timestamp()),
                              int(clock.now().timestamp()) + 60, Outcome.CONNECTED, "completed", 5, "q",
                              Origin.QUEUE_LOG)
        ingestor(store, clock).ingest([got_through])
    multi = [e for e in logs if e["event"] == "callback.claimed"]
    assert len(multi) == 1 and sorted(multi[0]["callback_ids"]) == sorted([one, two]) and multi[0]["count"] == 2
    unreachable = next(e for e in logs if e["event"] == "callback.unreachable")
    assert unreachable["callback_id"] == one and unreachable["log_level"] == "warning"
    cancelled = [e for e in logs if e["event"] == "callback.cancelled"]
    assert [(e["callback_id"], e["actor"], e["reason"]) for e in cancelled] == [
        (two, "ada", "wrong number"), (third, "detector", "self-resolved")]
    assert cancelled[1]["call_id"] == "ok-1"
    _no_whole_number(logs)


def test_a_queue_and_an_ingestor_of_their_own_are_silent(store: Store, clock: FakeClock) -> None:
    """What a CLI command builds: nothing of theirs reaches stdout, which is the command's output."""
    start = clock.now() - timedelta(hours=1)
    with capture_logs() as logs:
        [cid] = Ingestor(store, clock, RULES).ingest(failures(NUMBER, start, tag="a")).opened
        CallbackQueue(store, clock).claim("otto")
        CallbackQueue(store, clock).close(cid, "otto", "reached")
    assert logs == []


def test_nothing_is_logged_for_a_claim_of_nothing(store: Store, clock: FakeClock) -> None:
    with capture_logs() as logs:
        assert queue(store, clock).claim("otto", 3) == []
        assert queue(store, clock).claim_json("otto", 3) == ""
    assert logs == []


def test_json_claim_logs_its_ids(store: Store, clock: FakeClock) -> None:
    start = clock.now() - timedelta(hours=1)
    ids = ingestor(store, clock).ingest(failures(NUMBER, start, tag="a")
                                               + failures("+8613900000002", start, tag="b")).opened
    with capture_logs() as logs:
        queue(store, clock).claim_json("api-user", 5)
    [line] = logs
    assert line["event"] == "callback.claimed" and sorted(line["callback_ids"]) == sorted(ids)
    assert line["actor"] == "api-user"




def test_api_actions_log_the_user_and_mask_numbers(store: Store, clock: FakeClock) -> None:
    from console_support import app, bearer, services, tokens
    from starlette.testclient import TestClient

    start = clock.now() - timedelta(hours=1)
    [cid] = ingestor(store, clock).ingest(failures(NUMBER, start, tag="a")).opened
    toks = tokens(store, clock)
    svc = services(store, clock)
    svc.queue.log = get_logger("callbackd.queue")
    with TestClient(app(svc)) as client, capture_logs() as logs:
        assert client.post("/api/callbacks/claim", json={}, headers=bearer(toks["operator"])).status_code == 200
        assert client.post("/api/do-not-contact", json={"number": NUMBER, "reason": "asked"},
                           headers=bearer(toks["admin"])).status_code in (200, 201)
        assert client.delete(f"/api/do-not-contact/{NUMBER}", headers=bearer(toks["admin"])).status_code == 200
        assert client.get("/api/callbacks", headers=bearer(toks["admin"])).status_code == 200
    actions = [(e["user"], e["method"], e["action"]) for e in logs if e["event"] == "api.action"]
    assert actions == [("otto", "POST", "claim_next"), ("ada", "POST", "add_dnc"), ("ada", "DELETE", "remove_dnc")]
    claimed = next(e for e in logs if e["event"] == "callback.claimed")
    assert (claimed["callback_id"], claimed["actor"]) == (cid, "otto")
    _no_whole_number(logs)
