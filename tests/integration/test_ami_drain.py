"""SIGTERM drains: the calls under way end (and are recorded) before the daemon exits; none left dialing."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from support.ami_env import ami_settings
from support.ami_server import AmiTestServer

from callback_queue.attempts import Attempt, Origin, Outcome
from callback_queue.clock import SystemClock
from callback_queue.detection import DetectRules
from callback_queue.ingest import Ingestor
from callback_queue.queue import CallbackQueue
from callback_queue.store import Store
from daemon.app import Daemon

DIALER = {"kind": "ami", "tick": "0.2s", "drain_timeout": "10s",
          "ami": {"pbx": "pbx", "mode": "citizen-first", "citizen_channel": "Local/{number}@citizens",
                  "agent_exten": "200", "context": "callback_to_agent", "max_concurrent": 3, "settle_seconds": 0.1}}


@pytest.fixture
def db(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'drain.db'}")
    s.upgrade()
    yield s
    s.dispose()


def test_stop_waits_for_the_calls_under_way(db: Store, tmp_path: Path) -> None:
    start = int((datetime.now(UTC) - timedelta(hours=1)).timestamp())
    atts = [Attempt("pbx", f"c{i}-{k}", f"+1202555{i:03d}0", f"+1202555{i:03d}0", start + k * 60 + i,
                    start + k * 60 + i + 30, Outcome.FAILED, "abandon", 30, "q", Origin.QUEUE_LOG)
            for i in range(3) for k in range(3)]
    assert len(Ingestor(db, SystemClock(), DetectRules(min_wait_seconds=0)).ingest(atts).opened) == 3
    with AmiTestServer() as server:
        server.outcome_delay = 1.5         # each call takes 1.5 s to end
        s = ami_settings(server.port, dialer=DIALER)
        s = s.model_copy(update={"daemon": s.daemon.model_copy(update={"state_dir": tmp_path})})
        daemon = Daemon(s, store=db)
        t = threading.Thread(target=daemon.run, daemon=True)
        t.start()
        try:
            assert server.wait_for(lambda: len(server.originates) == 3, 15)
            daemon.stop()                   # as SIGTERM does, while the three calls are under way
            t.join(30)
            assert not t.is_alive()
        finally:
            daemon.stop()
    states = [c.state.value for c in CallbackQueue(Store(db.url), SystemClock()).list()]
    assert states == ["reached", "reached", "reached"]   # none left dialing: their outcomes came in first
