"""SIGKILL the daemon at random points while its SMS fallback sends through the REAL Twilio sender
(twilio-python, `[twilio] api_base_url`) to Prism serving Twilio's OpenAPI spec.

What "sent twice" means here. Prism is stateless: it validates each request against the spec and
answers with an example - the same SID every time, and a list of two example messages whatever was
sent. It cannot say what it received. So a recording HTTP front (tests/support/recording_proxy.py)
stands between the daemon and Prism, outside the daemon, and plays the provider's memory: a message
is *sent* when Prism accepted its POST (201); the front gives it a SID of its own and logs it to a
file (fsynced before any answer goes back); reconciliation's list query is answered from that log.
"Sent twice" is then two accepted POSTs for one outbox intent (one `sms_messages` row: one callback,
one number, one link token), counted in the front's log - the provider's view, which no kill can
erase.

The outbox (sms/outbox.py) commits `sending` before it calls the provider and the provider id after.
The front holds some answers back (0.1-0.5 s), cuts some connections after accepting (the client
cannot know it was sent: the row goes `unknown`), and refuses some with 503 (not accepted: retried).
A kill between "accepted" and "provider id stored" leaves a row `sending`; after `send_lease` the
outbox reconciles it with the provider (a list of messages to that number since the intent, matched
by the link token) and records the SID it finds instead of sending again. A kill before the POST
reached the provider leaves a row the list does not show: that one is sent again (once).

After the kills and a clean final run: every callback has exactly one accepted POST, one
`sms_messages` row whose provider id is that POST's SID, and is `sms_sent`; nothing is left sending.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support.crash import Proc, seeded, wait_for, write_config
from tests.support.dbcheck import TRANSIENT, read_callbacks, scalar
from tests.support.prism import prism
from tests.support.recording_proxy import RecordingTwilioFront, read_log
from tests.support.unreachable import Feeder

ACCOUNT = "AC" + "0" * 32
BATCH = 1  # unreachable callbacks added every 0.25 s while the daemon is being killed


@pytest.fixture(scope="module")
def prism_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with prism(tmp_path_factory.mktemp("prism")) as url:
        yield url


def _rows(store_url: str) -> list[sa.Row]:
    eng = sa.create_engine(store_url)
    try:
        with eng.connect() as c:
            return list(c.execute(sa.text(
                "SELECT id, callback_id, number, state, tries, provider_id, error FROM sms_messages ORDER BY id")))
    finally:
        eng.dispose()


def _twice(log: list[dict]) -> dict[str, int]:
    per = Counter(m["to"] for m in log)
    return {k: v for k, v in per.items() if v > 1}


def test_sigkill_while_sending_through_twilio_sends_each_sms_once(tmp_path: Path, store_url: str, prism_url: str):
    rng, seed, n = seeded("crash/sms-prism")
    provider_log = tmp_path / "provider-accepted.jsonl"
    front_rng = random.Random(rng.random())
    with RecordingTwilioFront(prism_url, provider_log, rng=front_rng, hold=(0.1, 0.5), p_hold=0.4, p_cut=0.1,
                              p_unavailable=0.1, first=("503", "cut")) as front:
        cfg = write_config(tmp_path, store_url, f"""
[sms]
quiet_hours = []   # runs at any hour
poll_interval = "0.05s"
send_lease = "1s"   # a row a killed worker left 'sending' is reconciled after this (default 5m)
backoff = "0.2s"
max_tries = 50
routes = [{{ prefix = "", sender = "twilio", language = "en" }}]

[twilio]
account_sid = "{ACCOUNT}"
auth_token = "test-auth-token"
from_number = "+15017122661"
api_base_url = "{front.url}"
timeout = "5s"
""")
        feeder = Feeder(store_url, random.Random(rng.random()), lambda r: f"+1202555{r.randrange(10**4):04d}",
                        batch=BATCH, pause=0.25)
        feeder.start()
        progress: list[int] = []
        for i in range(n):
            proc = Proc(cfg, "run", tag=f"run{i}")
            try:
                assert proc.wait_started(), proc.stderr()[-3000:]
                time.sleep(rng.uniform(0.2, 2.5))   # a random moment while messages go out
            finally:
                rc = proc.kill()
            assert rc is None, f"the daemon exited on its own ({rc}): {proc.stderr()[-2000:]}"
            log = read_log(provider_log)
            progress.append(len(log))
            assert _twice(log) == {}, f"after kill {i}: an SMS accepted twice by the provider"
        feeder.halt.set()
        feeder.join(timeout=30)
        assert feeder.error is None, feeder.error
        callbacks = feeder.callbacks
        assert len(callbacks) > BATCH and any(progress), (len(callbacks), progress)

        final = Proc(cfg, "run", tag="final")
        try:
            assert final.wait_started(), final.stderr()[-3000:]
            done = wait_for(lambda: scalar(store_url, "SELECT COUNT(*) FROM callbacks WHERE state = 'unreachable'")
                            == 0, timeout=90, interval=0.3)
            assert done, f"still unreachable; SMS rows: {[tuple(r) for r in _rows(store_url) if r.state != 'sent']}"
        finally:
            rc = final.stop()
        assert rc == 0, final.stderr()[-3000:]
        requests = list(front.requests)
        assert front.errors == [], front.errors
    outcomes = Counter(str(s) for m, p, s in requests if m == "POST")
    lists = sum(1 for m, _p, s in requests if m == "GET" and s == 200)
    print(f"crash/sms-prism: {n} kills, {len(callbacks)} callbacks; accepted after each kill: {progress}; "
          f"POST outcomes {dict(outcomes)}, {lists} reconciliation lists")

    log = read_log(provider_log)
    assert _twice(log) == {}, "an SMS accepted twice by the provider"
    assert sorted(m["to"] for m in log) == sorted(callbacks.values()), "an SMS lost (or one nobody asked for)"
    sid_of = {m["to"]: m["sid"] for m in log}
    rows = _rows(store_url)
    assert sorted(r.callback_id for r in rows) == sorted(callbacks), "one sms_messages row per callback"
    assert [r.id for r in rows if r.state != "sent"] == []
    wrong = [(r.id, r.provider_id, sid_of[r.number]) for r in rows if r.provider_id != sid_of[r.number]]
    assert wrong == [], f"provider ids that are not the SID the provider gave: {wrong[:5]}"
    states = {c.id: c.state for c in read_callbacks(store_url)}
    assert {states[cid] for cid in callbacks} == {"sms_sent"}
    assert [cid for cid, s in states.items() if s in TRANSIENT] == []
    # the faults did happen: answers cut after acceptance, refusals, and lists from reconciliation
    assert outcomes["cut"] >= 1 and outcomes["503"] >= 1 and lists >= 1, (outcomes, lists)
