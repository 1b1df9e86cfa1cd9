"""Helpers for the API, console and auth tests: services over a test store, users, seeded callbacks."""

from __future__ import annotations

from datetime import datetime, timedelta

from callback_queue.attempts import Attempt, Origin, Outcome
from callback_queue.clock import Clock
from callback_queue.detection import DetectRules
from callback_queue.ingest import Ingestor
from callback_queue.queue import CallbackQueue
from callback_queue.store import Store
from callback_queue.users import Users
from daemon.http.app import Services, create_app
from daemon.settings import Settings

RULES = DetectRules(threshold=3, min_wait_seconds=0)


def failures(number: str, first: datetime, n: int = 3, gap: int = 60, tag: str = "") -> list[Attempt]:
    start = int(first.timestamp())
    return [
        Attempt(system="pbx", call_id=f"{number}{tag}-{i}", caller=number, number=number,
                started_ts=start + i * gap, ended_ts=start + i * gap + 40, outcome=Outcome.FAILED,
                reason="abandon", wait_seconds=40, queue="hotline", origin=Origin.QUEUE_LOG)
        for i in range(n)
    ]


def seed(store: Store, clock: Clock, count: int, start: datetime | None = None) -> list[int]:
    """`count` callers who each failed three times; returns the callbacks opened."""
    first = start or clock.now() - timedelta(hours=2)
    batch = [a for i in range(count) for a in failures(f"+86138{i:08d}", first + timedelta(minutes=i))]
    return Ingestor(store, clock, RULES).ingest(batch).opened


def services(store: Store, clock: Clock, settings: Settings | None = None) -> Services:
    s = settings or Settings()
    return Services(settings=s, store=store, clock=clock, queue=CallbackQueue(store, clock))


def app(svc: Services):  # type: ignore[no-untyped-def]
    from daemon.http import api, console, metrics

    return create_app(svc, [api.api_routes, console.console_routes, metrics.metrics_routes])


def tokens(store: Store, clock: Clock) -> dict[str, str]:
    u = Users(store, clock)
    return {"admin": u.add("ada", "admin")[1], "operator": u.add("otto", "operator")[1],
            "operator2": u.add("olga", "operator")[1]}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
