"""Events whose values no attempt can hold reach the dead letters with a reason, through the real link
and source, on SQLite and PostgreSQL; the rest of the stream is stored as if they had not been there.

Before the fix: `Timestamp: nan` raised out of the reducer (and `float()` of a Timestamp such as "soon"
out of the source's cursor code), so the whole flushed batch of events was lost; a 20-digit Timestamp
or HoldTime made an attempt PostgreSQL refuses, and the source retried that batch for ever.
"""

from __future__ import annotations

from datetime import UTC, datetime

from support.ami_env import ami_settings, attempts, dead_letters, drain, running_source
from support.ami_server import AmiTestServer

from callback_queue.clock import FakeClock
from callback_queue.store import Store

BAD = [("Timestamp", "nan"), ("Timestamp", "soon"), ("Timestamp", "99999999999999999999"),
       ("HoldTime", "99999999999999999999"), ("HoldTime", "-4")]


def _visit(uid: str, caller: str, ts: int, extra: tuple[str, str] | None = None) -> list[bytes]:
    def pkt(name: str, t: int, *keys: tuple[str, str]) -> bytes:
        lines = [f"Event: {name}", "Privilege: agent,all", f"Uniqueid: {uid}", *(f"{k}: {v}" for k, v in keys)]
        if not any(k == "Timestamp" for k, _ in keys):
            lines.append(f"Timestamp: {t}.000000")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    abandon = [("Queue", "hotline"), ("HoldTime", "20")]
    if extra is not None:
        abandon = [(k, v) for k, v in abandon if k != extra[0]] + [extra]
    return [pkt("QueueCallerJoin", ts, ("CallerIDNum", caller), ("Queue", "hotline")),
            pkt("HangupRequest", ts + 20),
            pkt("QueueCallerAbandon", ts + 20, *abandon)]


def test_unusable_values_are_dead_letters_and_the_rest_is_stored(store: Store) -> None:
    clock = FakeClock(datetime(2026, 11, 27, 10, 0, tzinfo=UTC))
    t0 = int(clock.now().timestamp()) - 3600
    with AmiTestServer() as server:
        s = ami_settings(server.port, extra={"flush_interval": 0.05})
        with running_source(s, store, clock) as src:
            server.wait_logged_in()
            for i, bad in enumerate(BAD):
                server.send_events(_visit(f"{t0}.{i}", f"55501{i:02d}", t0 + 60 * i, bad))
                server.send_events(_visit(f"{t0}.{i + 50}", f"55502{i:02d}", t0 + 60 * i + 5))
            drain(src)
            drain(src)
    got = {(r["call_id"], r["reason"], r["wait_seconds"]) for r in attempts(store)}
    # the good visits as sent; a visit whose abandon was refused has no end the reducer could use (it
    # stays undecided), and the refused event is a dead letter - not lost, not a failed batch
    assert {(f"{t0}.{i + 50}", "abandon", 20) for i in range(len(BAD))} <= got
    assert all(w is None or 0 <= w < 2**31 for _, _, w in got)
    dead = dead_letters(store)
    assert len(dead) == len(BAD), dead
    for (key, value), d in zip(BAD, sorted(dead, key=lambda d: BAD.index(next(
            b for b in BAD if f"{b[0].lower()}: {b[1]}".encode() in d["raw"]))), strict=True):
        assert key in d["reason"] and value[:10] in d["reason"], d
