"""Helpers for the AMI tests: settings like test_captures.py's, a running source, table reads."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from callback_queue import schema as t
from callback_queue.clock import Clock
from callback_queue.ingest import Ingestor
from callback_queue.store import Store
from daemon.ami.source import AmiSource, make_link
from daemon.app import detect_rules, normalizer, queue_log_parser
from daemon.settings import Settings
from daemon.sources.pipeline import import_file


def captures_dir() -> Path:
    env = os.environ.get("CALLBACKD_SHARED")
    root = Path(__file__).resolve().parents[2]
    for c in ([Path(env)] if env else [root.parent / "shared", root.parent.parent / "shared"]):
        if (c / "asterisk" / "captures").is_dir():
            return c / "asterisk" / "captures"
    raise RuntimeError("shared/asterisk/captures not found; set CALLBACKD_SHARED")


CAPTURES = captures_dir()
STEPS = sorted(p.name.removesuffix(".ami.raw") for p in (CAPTURES / "steps").glob("*.ami.raw"))


def ami_settings(port: int, *, name: str = "pbx", secret: str = "callbackd-secret", queue_log: Path | None = None,
                 extra: dict[str, Any] | None = None, more_pbx: list[dict[str, Any]] | None = None,
                 dialer: dict[str, Any] | None = None) -> Settings:
    src = {"name": name, "host": "127.0.0.1", "port": port, "username": "callbackd", "secret": secret,
           "flush_interval": 0.05, **(extra or {})}
    sources: dict[str, Any] = {"ami": [src, *(more_pbx or [])]}
    if queue_log is not None:
        sources["queue_log"] = {"path": str(queue_log), "system": name}
    data: dict[str, Any] = {
        "daemon": {"timezone": "UTC"},
        "detect": {"threshold": 3, "lookback": "24h", "min_wait_seconds": 5, "default_region": "US",
                   "internal_max_digits": 5},
        "sources": sources,
        "http": {"enabled": False},
    }
    if dialer is not None:
        data["dialer"] = dialer
    return Settings.model_validate(data)


@contextmanager
def running_source(settings: Settings, store: Store, clock: Clock, index: int = 0,
                   backfilled_by: list[str] | None = None) -> Iterator[AmiSource]:
    s = settings.sources.ami[index]
    link = make_link(s)
    ingestor = Ingestor(store, clock, detect_rules(settings))
    src = AmiSource(s, link, ingestor, normalizer(settings), clock=clock, backfilled_by=backfilled_by)
    src.start()
    try:
        assert link.wait_connected(5), f"AMI link {s.name} did not come up"
        yield src
    finally:
        src.stop()


def drain(src: AmiSource) -> None:
    """Everything the server sent before now has reached the source, and is stored."""
    src.link.action("Ping", {}, timeout=5)
    src.flush()


def import_queue_log(settings: Settings, store: Store, clock: Clock, path: Path) -> None:
    ingestor = Ingestor(store, clock, detect_rules(settings))
    import_file(path, queue_log_parser(settings, normalizer(settings)), ingestor)


def attempts(store: Store) -> list[dict[str, Any]]:
    a = t.attempts
    with store.read() as c:
        rows = c.execute(sa.select(a.c.system, a.c.call_id, a.c.caller, a.c.number, a.c.started_ts, a.c.ended_ts,
                                   a.c.outcome, a.c.reason, a.c.wait_seconds, a.c.queue, a.c.origin)
                         .order_by(a.c.started_ts, a.c.call_id)).all()
    return [dict(r._mapping) for r in rows]


def callbacks(store: Store) -> dict[str, tuple[Any, ...]]:
    cb = t.callbacks
    with store.read() as c:
        return {r.number: (r.state, r.failures) for r in c.execute(sa.select(cb.c.number, cb.c.state, cb.c.failures))}


def dead_letters(store: Store) -> list[dict[str, Any]]:
    d = t.dead_letters
    with store.read() as c:
        return [dict(r._mapping) for r in c.execute(sa.select(d.c.source, d.c.position, d.c.reason, d.c.raw))]


def wipe(store: Store) -> None:
    with store.write() as c:
        for table in reversed(t.metadata.sorted_tables):
            c.execute(table.delete())
