"""Callbacks closed as unreachable, added all along while the SMS crash tests kill the daemon."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from callback_queue import schema as t
from callback_queue.ingest import _ev
from callback_queue.store import Store


def add_unreachable(store: Store, numbers: list[str]) -> dict[int, str]:
    """One callback per number, closed as unreachable after three dials (so the SMS fallback owes one)."""
    now = datetime.now(UTC)
    out: dict[int, str] = {}
    with store.write() as conn:
        for number in numbers:
            cid = conn.execute(t.callbacks.insert().values(
                kind="recall", number=number, state="unreachable", failures=3,
                episode_start=now - timedelta(hours=3), triggered_at=now - timedelta(hours=2),
                last_failed_at=now - timedelta(hours=2), due_at=now - timedelta(hours=1), dial_attempts=3,
                created_at=now, updated_at=now, closed_at=now, outcome="no-answer",
                close_reason="3 calls without reaching the citizen").returning(t.callbacks.c.id)).scalar_one()
            conn.execute(t.callback_events.insert(),
                         [_ev(cid, now, "test", "closed", "dialing", "unreachable", {})])
            out[int(cid)] = number
    return out


class Feeder(threading.Thread):
    """Closes `batch` new callbacks as unreachable every `pause` seconds, so kills land while messages
    are going out; `callbacks` maps each id to its number."""

    def __init__(self, store_url: str, rng: random.Random, number: Callable[[random.Random], str], *,
                 batch: int, pause: float) -> None:
        super().__init__(daemon=True)
        self.store_url, self.rng, self.number = store_url, rng, number
        self.batch, self.pause = batch, pause
        self.callbacks: dict[int, str] = {}
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        store = Store(self.store_url)
        try:
            while not self.halt.is_set():
                numbers = [self.number(self.rng) for _ in range(self.batch)]
                numbers = [x for x in dict.fromkeys(numbers) if x not in self.callbacks.values()]
                self.callbacks.update(add_unreachable(store, numbers))
                self.halt.wait(self.pause)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            store.dispose()
