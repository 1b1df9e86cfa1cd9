"""What a live tail says in the logs: a batch that opened, cancelled or dead-lettered something is
logged at info; routine batches (calls that changed nothing in the queue) only at debug, so a busy
hotline's every call is not a log line (the metrics count them)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import structlog
from structlog.testing import LogCapture

from callback_queue.clock import FakeClock
from callback_queue.ingest import Ingestor
from callback_queue.store import Store
from daemon.app import detect_rules, normalizer, queue_log_parser
from daemon.settings import Settings
from daemon.sources.pipeline import TailRunner

T0 = int(datetime(2026, 3, 2, 2, 0, tzinfo=UTC).timestamp())


def call(ts: int, uid: str, caller: str, verb: str) -> str:
    closing = {"ABANDON": "ABANDON|1|1|20", "CONNECT": "CONNECT|20|1700000000.9|1"}[verb]
    return (f"{ts}|{uid}|hotline|NONE|ENTERQUEUE||{caller}|1\n"
            f"{ts + 20}|{uid}|hotline|{'Agent/1' if verb == 'CONNECT' else 'NONE'}|{closing}\n")


def batches(tail: TailRunner, cap: LogCapture, qlog: Path, text: str) -> list[dict]:
    with qlog.open("a") as f:
        f.write(text)
    cap.entries.clear()
    tail.poll()
    return [e for e in cap.entries if e["event"] == "source.batch"]


def test_routine_batches_at_debug_news_at_info(store: Store, tmp_path: Path) -> None:
    qlog = tmp_path / "queue_log"
    qlog.write_text("")
    s = Settings.model_validate({
        "daemon": {"timezone": "UTC"},
        "detect": {"threshold": 3, "lookback": "24h", "min_wait_seconds": 5, "default_region": "CN"},
        "sources": {"queue_log": {"path": str(qlog), "system": "pbx"}},
    })
    clock = FakeClock(datetime.fromtimestamp(T0 + 3600, UTC))
    # a logger of its own that keeps every level (the suite's structlog configuration may filter debug out)
    cap = LogCapture()
    log = structlog.wrap_logger(structlog.ReturnLogger(), processors=[structlog.processors.add_log_level, cap],
                                wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    tail = TailRunner("queue_log:pbx", qlog, queue_log_parser(s, normalizer(s)),
                      Ingestor(store, clock, detect_rules(s)), log=log)
    try:
        # a call that got through: nothing for the queue
        got = batches(tail, cap, qlog, call(T0, f"{T0}.1", "13800138000", "CONNECT"))
        assert [(e["log_level"], e["lines"], e["opened"]) for e in got] == [("debug", 2, 0)]
        # two abandons: still routine (below the threshold)
        got = batches(tail, cap, qlog, call(T0 + 60, f"{T0 + 60}.2", "13900139000", "ABANDON")
                      + call(T0 + 120, f"{T0 + 120}.3", "13900139000", "ABANDON"))
        assert [(e["log_level"], e["opened"]) for e in got] == [("debug", 0)]
        # the third opens a callback: news
        got = batches(tail, cap, qlog, call(T0 + 180, f"{T0 + 180}.4", "13900139000", "ABANDON"))
        assert [(e["log_level"], e["opened"]) for e in got] == [("info", 1)]
        # the caller gets through: their callback is cancelled, news again
        got = batches(tail, cap, qlog, call(T0 + 240, f"{T0 + 240}.5", "13900139000", "CONNECT"))
        assert [(e["log_level"], e["cancelled"]) for e in got] == [("info", 1)]
        # a line that cannot be read is dead-lettered: news
        got = batches(tail, cap, qlog, "this is not a queue_log line\n")
        assert [(e["log_level"], e["dead_letters"]) for e in got] == [("info", 1)]
    finally:
        tail.close()
