"""Values past what the attempts table holds are dead letters, never a batch the database refuses.

Before the fix a queue_log line with a 20-digit time (or an 11-digit wait, or a 129-character callid)
became an attempt that SQLite cannot bind and PostgreSQL refuses: the whole chunk's transaction
failed, taking the good lines of the chunk with it - and a tail retries the same chunk for ever.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from callback_queue import schema as t
from callback_queue.clock import FakeClock
from callback_queue.detection import DetectRules
from callback_queue.ingest import Ingestor
from callback_queue.numbers import normalizer_from
from callback_queue.store import Store
from daemon.sources.pipeline import import_file
from daemon.sources.queue_log import QueueLogParser

POISON = [
    "99999999999999999999|p.1|q|NONE|ENTERQUEUE||13812345670|1",
    "99999999999999999999|p.1|q|NONE|ABANDON|1|1|5",
    "1795770000|p.2|q|NONE|ENTERQUEUE||13812345671|1",
    "1795770009|p.2|q|NONE|ABANDON|1|1|99999999999",
    "1795770000|" + "u" * 129 + "|q|NONE|ABANDON|1|1|5",
]


def test_a_queue_log_with_values_past_the_limits_stores_the_rest(store: Store, tmp_path: Path) -> None:
    good = []
    for i in range(5):
        ts = 1795770000 + 100 * i
        good += [f"{ts}|g.{i}|q|NONE|ENTERQUEUE||1381234560{i}|1", f"{ts + 30}|g.{i}|q|NONE|ABANDON|1|1|30"]
    log = tmp_path / "queue_log"
    log.write_text("\n".join(good[:4] + POISON + good[4:]) + "\n")
    parser = QueueLogParser(source="queue_log", system="pbx", normalizer=normalizer_from("CN", 5, [], []))
    clock = FakeClock(datetime(2026, 11, 27, 10, 0, tzinfo=UTC))
    import_file(log, parser, Ingestor(store, clock, DetectRules()))
    with store.read() as c:
        ids = sorted(c.execute(sa.select(t.attempts.c.call_id)).scalars())
        dead = c.execute(sa.select(t.dead_letters.c.raw, t.dead_letters.c.reason)).all()
    assert ids == [f"g.{i}" for i in range(5)]
    assert sorted(bytes(d.raw).decode() for d in dead) == sorted([POISON[0], POISON[1], POISON[3], POISON[4]])
    assert all(d.reason for d in dead)
