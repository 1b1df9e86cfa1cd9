"""SIGKILL the daemon at random points while it dials due callbacks through the test AMI server.

The server (tests/support/ami_server.py) runs in this process, so it outlives every kill and sees
every Originate that reached the PBX. Callbacks keep arriving (a feeder thread ingests three failed
calls for a new number every few tenths of a second); the dialer alternates between citizen-first
and agent-first from one restart to the next; numbers decide how the PBX answers (last digit:
0-4 answer, 5-6 no answer, 7 reject, 8 busy, 9 congestion). Retries are 1 s apart, leases 3 s.

After every kill: every Originate the PBX received carries a dial ref the database recorded
(the claim is committed before the call is placed), every callback found "dialing" holds its
claim, and the model of detection holds. After a clean final run:
- every Originate is for a distinct (callback, dial attempt): no number dialed twice for one
  attempt, whatever the kill interrupted (a claim not yet sent, a call ringing, an outcome not
  yet recorded - such a call is reconciled with the PBX and counted as a failed attempt);
- nothing is dialed after the attempt that reached the citizen; a callback is reached only by a
  number that answers, and one that answers yet ended unreachable had crash-failed attempts;
- every callback the model wants exists once, and none is left dialing, claimed or waiting.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from callback_queue.attempts import Attempt, Origin, Outcome
from callback_queue.clock import SystemClock
from callback_queue.detection import DetectRules
from callback_queue.ingest import Ingestor
from callback_queue.store import Store
from tests.support.ami_server import AmiTestServer
from tests.support.crash import Proc, seeded, wait_for, write_config
from tests.support.dbcheck import OPEN, model_mismatches, read_attempt_ids, read_callbacks, scalar
from tests.support.model import expected

RULES = DetectRules(threshold=3, lookback_seconds=3650 * 86400, min_wait_seconds=5)
ENDED = ("reached", "unreachable")
ANSWERS = set("01234")
MODES = ("citizen-first", "agent-first")


def _config(tmp: Path, store_url: str, port: int, mode: str) -> Path:
    return write_config(tmp, store_url, f"""
[[sources.ami]]
name = "pbx"
port = {port}
username = "callbackd"
secret = "callbackd-secret"

[dialer]
kind = "ami"
lease = "3s"
tick = "0.1s"
drain_timeout = "10s"

[dialer.ami]
pbx = "pbx"
mode = "{mode}"
citizen_channel = "Local/{{number}}@citizens"
agent_channel = "Local/200@agents"
agent_exten = "200"
context = "callback_to_agent"
max_concurrent = 6
settle_seconds = 0.2

[retry]
max_attempts = 5
min_spacing = "1s"

[retry.rules]
busy = {{ delay = "1s", times = 3 }}
no-answer = {{ delay = "1s", times = 2 }}
congestion = {{ delay = "1s", times = 3 }}
failed = {{ delay = "1s", times = 1 }}

[sms]
enabled = false
""")


class Feeder(threading.Thread):
    """Ingests three failed calls for a new number every `every` seconds: new callbacks all along."""

    def __init__(self, store_url: str, rng: random.Random, *, first: int, every: float) -> None:
        super().__init__(daemon=True)
        self.store_url, self.rng, self.first, self.every = store_url, rng, first, every
        self.attempts: dict[str, Attempt] = {}   # every attempt handed to the ingestor (by call id)
        self.numbers: set[str] = set()
        self.halt = threading.Event()
        self.ready = threading.Event()
        #: held while a batch is ingested: a check holding it sees attempts and callbacks of the same batches
        self.lock = threading.Lock()
        self.error: BaseException | None = None

    def _batch(self, count: int) -> list[Attempt]:
        out = []
        t0 = int(time.time()) - 3 * 3600
        for _ in range(count):
            number = f"+86138{self.rng.randrange(10**8):08d}"
            while number in self.numbers:
                number = f"+86138{self.rng.randrange(10**8):08d}"
            self.numbers.add(number)
            for k in range(3):
                t = t0 + 60 * k + self.rng.randrange(30)
                out.append(Attempt("pbx", f"dial-{number[1:]}-{k}", number, number, t, t + 30, Outcome.FAILED,
                                   "abandon", 30, "hotline", Origin.QUEUE_LOG))
        return out

    def run(self) -> None:
        store = Store(self.store_url)
        try:
            ingestor = Ingestor(store, SystemClock(), RULES)
            count = self.first
            while not self.halt.is_set():
                batch = self._batch(count)
                with self.lock:
                    self.attempts.update({a.call_id: a for a in batch})
                    ingestor.ingest(batch)
                self.ready.set()
                count = 1
                self.halt.wait(self.every)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.ready.set()
            store.dispose()


def _variables(originate: dict[str, Any]) -> dict[str, str]:
    raw = originate.get("Variable", [])
    return dict(v.split("=", 1) for v in ([raw] if isinstance(raw, str) else raw))


def _events(store_url: str, kind: str) -> list[tuple[int, dict[str, Any], str | None]]:
    eng = sa.create_engine(store_url)
    try:
        with eng.connect() as c:
            rows = c.execute(sa.text("SELECT callback_id, detail, to_state FROM callback_events WHERE event = :k "
                                     "ORDER BY id"), {"k": kind}).all()
    finally:
        eng.dispose()
    return [(r.callback_id, json.loads(r.detail or "{}"), r.to_state) for r in rows]


def _claims(store_url: str) -> dict[str, tuple[int, int]]:
    """dial_ref -> (callback id, attempt) of every claim recorded in the audit trail."""
    out: dict[str, tuple[int, int]] = {}
    for cid, d, _ in _events(store_url, "dialing"):
        assert d["dial_ref"] not in out, f"dial ref {d['dial_ref']} claimed twice"
        out[d["dial_ref"]] = (cid, int(d["attempt"]))
    return out


def _check_dials(server: AmiTestServer, store_url: str, when: str) -> None:
    claims = _claims(store_url)
    seen: Counter[tuple[str, str]] = Counter()
    for o in list(server.originates):
        v = _variables(o)
        seen[(v["CALLBACK_ID"], v["CALLBACK_ATTEMPT"])] += 1
        ref = o["ActionID"]
        assert ref in claims, f"{when}: Originate {ref} was placed without its claim committed first"
        assert claims[ref] == (int(v["CALLBACK_ID"]), int(v["CALLBACK_ATTEMPT"])), (when, ref, claims[ref], v)
    twice = {k: n for k, n in seen.items() if n > 1}
    assert twice == {}, f"{when}: (callback, attempt) dialed more than once: {twice}"


def _check_model(feeder: Feeder, store_url: str, when: str) -> None:
    with feeder.lock:   # (two reads: a batch committed between them would look like a stray callback)
        stored = read_attempt_ids(store_url)
        callbacks = read_callbacks(store_url)
    exp = expected([feeder.attempts[c] for c in stored], RULES, int(time.time()))
    problems = model_mismatches(exp, callbacks, owed_states=(*OPEN, *ENDED))
    assert problems == [], f"{when}: {problems[:5]}"


def test_sigkill_while_dialing_dials_each_attempt_once(tmp_path: Path, store_url: str):
    rng, seed, n = seeded("crash/dial")
    feeder = Feeder(store_url, random.Random(rng.random()), first=10, every=0.4)
    with AmiTestServer() as server:
        server.outcome_delay = 0.25   # calls ring for a while: kills land on calls under way
        feeder.start()
        assert feeder.ready.wait(30) and feeder.error is None, feeder.error
        modes = []
        for i in range(n):
            mode = MODES[i % 2]
            modes.append(mode)
            proc = Proc(_config(tmp_path, store_url, server.port, mode), "run", tag=f"run{i}")
            try:
                assert proc.wait_started(), proc.stderr()[-3000:]
                # at a random moment once the link is up and calls are going out
                server.wait_for(lambda: len(server.logged_in()) > 0, 10)
                time.sleep(rng.uniform(0.2, 2.5))
            finally:
                rc = proc.kill()
            assert rc is None, f"the daemon exited on its own ({rc}): {proc.stderr()[-2000:]}"
            when = f"after kill {i} ({mode})"
            _check_dials(server, store_url, when)
            dialing = [c for c in read_callbacks(store_url) if c.state == "dialing"]
            assert [c.id for c in dialing if not (c.claimed_by and c.lease_until)] == [], when
            _check_model(feeder, store_url, when)
        feeder.halt.set()
        feeder.join(timeout=30)
        assert feeder.error is None, feeder.error
        killed_mid_call = len(server.originates)

        final = Proc(_config(tmp_path, store_url, server.port, rng.choice(MODES)), "run", tag="final")
        open_sql = "SELECT COUNT(*) FROM callbacks WHERE state IN ('pending', 'scheduled', 'dialing', 'retry_wait')"
        try:
            assert final.wait_started(), final.stderr()[-3000:]
            assert wait_for(lambda: scalar(store_url, open_sql) == 0, timeout=90, interval=0.3), \
                [(c.id, c.state, c.dial_attempts) for c in read_callbacks(store_url) if c.state in OPEN]
        finally:
            rc = final.stop()
        assert rc == 0, final.stderr()[-3000:]
        originates = list(server.originates)
    print(f"crash/dial: {n} kills ({dict(Counter(modes))}), {len(feeder.numbers)} callbacks, "
          f"{killed_mid_call} Originates before the final run, {len(originates)} in all")

    _check_dials(server, store_url, "at the end")
    _check_model(feeder, store_url, "at the end")
    callbacks = read_callbacks(store_url)
    assert len(callbacks) == len(feeder.numbers) >= 10
    assert sorted(c.number for c in callbacks) == sorted(feeder.numbers), "a callback lost or doubled"
    assert {c.state for c in callbacks} <= set(ENDED), Counter(c.state for c in callbacks)
    assert [c.id for c in callbacks if c.claimed_by or c.lease_until] == [], "a claim left behind"

    per_callback: dict[int, list[int]] = {}
    for o in originates:
        v = _variables(o)
        per_callback.setdefault(int(v["CALLBACK_ID"]), []).append(int(v["CALLBACK_ATTEMPT"]))
    closing = {}
    for cid, d, to_state in _events(store_url, "closed"):
        if to_state == "reached":
            closing[cid] = d
    # the test PBX never fails a call to a number that answers: a "failed" attempt is a crash's
    # (reconciled with the PBX after a kill) or a call that could not be sent
    crash_failed = Counter(cid for cid, d, _ in _events(store_url, "closed") if d.get("outcome") == "failed")
    reached_any = False
    for c in callbacks:
        answers = c.number[-1] in ANSWERS
        attempts = per_callback.get(c.id, [])
        assert len(attempts) <= c.dial_attempts, (c, attempts)   # a claim killed before its Originate: none
        if c.state == "reached":
            reached_any = True
            assert answers, f"callback {c.id} ({c.number}) reached, but that number never answers"
            last = max(attempts)
            assert last == c.dial_attempts, f"callback {c.id}: dialed again after it was reached ({attempts})"
            assert closing[c.id]["outcome"] == "reached"
        else:
            assert not answers or crash_failed[c.id], (
                f"callback {c.id} ({c.number}) answers, yet ended {c.state} with no failed attempt")
    assert reached_any
