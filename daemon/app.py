"""The composition root: settings in, store, clock, sources and scheduler wired together.

APScheduler only times the work (source polls, the lease sweep); the durable
state is always our tables. `main(argv) -> int` style: `Daemon.run` returns
the exit code.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from callback_queue.clock import Clock, SystemClock
from callback_queue.detection import DetectRules
from callback_queue.ingest import Ingestor
from callback_queue.numbers import Normalizer, normalizer_from
from callback_queue.queue import CallbackQueue, RetryRules
from callback_queue.store import Store

from .logs import get_logger
from .settings import Settings


def detect_rules(s: Settings) -> DetectRules:
    d = s.detect
    return DetectRules(threshold=d.threshold, lookback_seconds=int(d.lookback.total_seconds()),
                       min_wait_seconds=d.min_wait_seconds, count_reasons=frozenset(d.count_reasons))


def normalizer(s: Settings) -> Normalizer:
    d = s.detect
    return normalizer_from(d.default_region, d.internal_max_digits, d.ignore_numbers, d.ignore_patterns)


def open_store(s: Settings) -> Store:
    return Store(s.store_url, busy_timeout_ms=s.store.busy_timeout_ms, pool_size=s.store.pool_size)


def callback_queue(s: Settings, store: Store, clock: Clock) -> CallbackQueue:
    q = s.queue
    retry = RetryRules(max_attempts=q.max_attempts,
                       delays=tuple((k, int(v.total_seconds())) for k, v in q.retry_delays.items()))
    return CallbackQueue(store, clock, retry, lease=q.lease)


def queue_log_parser(s: Settings, norm: Normalizer) -> Any:
    from zoneinfo import ZoneInfo

    from .sources.queue_log import QueueLogParser

    src = s.sources.queue_log
    assert src is not None
    return QueueLogParser(source=f"queue_log:{src.system}", system=src.system, normalizer=norm,
                          tz=ZoneInfo(src.timezone or s.daemon.timezone))


def cdr_parser(s: Settings, norm: Normalizer) -> Any:
    from zoneinfo import ZoneInfo

    from .sources.cdr import CdrOptions, CdrParser

    src = s.sources.cdr
    assert src is not None
    opts = CdrOptions(inbound_contexts=frozenset(src.inbound_contexts),
                      hotline_numbers=frozenset(src.hotline_numbers), layout=src.layout,
                      tz=ZoneInfo(src.timezone or s.daemon.timezone))
    return CdrParser(source=f"cdr:{src.system}", system=src.system, normalizer=norm, options=opts)


@dataclass
class _Job:
    name: str
    fn: Any
    failures: int = 0
    last_error: str | None = None


class Daemon:
    def __init__(self, settings: Settings, *, store: Store | None = None, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.store = store or open_store(settings)
        self.log = get_logger("callbackd")
        self.stop_event = threading.Event()
        self.tails: list[Any] = []
        self.scheduler: Any = None

    def _build(self) -> None:
        from .sources.pipeline import TailRunner

        s = self.settings
        norm = normalizer(s)
        ingestor = Ingestor(self.store, self.clock, detect_rules(s))
        self.queue = callback_queue(s, self.store, self.clock)
        if s.sources.queue_log:
            src = s.sources.queue_log
            self.tails.append((TailRunner(f"queue_log:{src.system}", src.path, queue_log_parser(s, norm), ingestor,
                                          start_at_end=src.start_at == "end", log=self.log),
                               src.poll_interval))
        if s.sources.cdr:
            src2 = s.sources.cdr
            self.tails.append((TailRunner(f"cdr:{src2.system}", src2.path, cdr_parser(s, norm), ingestor,
                                          start_at_end=src2.start_at == "end", log=self.log),
                               src2.poll_interval))

    def _guard(self, job: _Job) -> Any:
        """Run a job; log a failure once per change of error, not once per tick."""

        def run() -> None:
            try:
                job.fn()
            except Exception as exc:  # noqa: BLE001 - a source must never take the daemon down
                msg = f"{type(exc).__name__}: {exc}"
                job.failures += 1
                if msg != job.last_error:
                    self.log.error("job.failed", job=job.name, error=msg, failures=job.failures)
                    job.last_error = msg
            else:
                if job.last_error is not None:
                    self.log.info("job.recovered", job=job.name, after_failures=job.failures)
                job.failures, job.last_error = 0, None

        return run

    def run(self) -> int:
        from apscheduler.schedulers.background import BackgroundScheduler

        self.store.require_current()
        self._build()
        sched = BackgroundScheduler(timezone=UTC, job_defaults={"max_instances": 1, "coalesce": True,
                                                                "misfire_grace_time": 30})
        for runner, interval in self.tails:
            sched.add_job(self._guard(_Job(runner.name, runner.poll)), "interval",
                          seconds=interval.total_seconds(), id=f"poll:{runner.name}", next_run_time=_now())
        sched.add_job(self._guard(_Job("sweep", self._sweep)), "interval",
                      seconds=self.settings.daemon.sweep_interval.total_seconds(), id="sweep",
                      next_run_time=_now())
        self.scheduler = sched
        self._signals()
        sched.start()
        self.log.info("daemon.started", store=_redact(self.store.url),
                      sources=[r.name for r, _ in self.tails], config=self.settings.origin)
        try:
            while not self.stop_event.wait(1.0):
                pass
        finally:
            self.log.info("daemon.stopping")
            sched.shutdown(wait=True)
            for runner, _ in self.tails:
                runner.close()
            self.store.dispose()
            self.log.info("daemon.stopped")
        return 0

    def _sweep(self) -> None:
        released = self.queue.sweep()
        for cid in released:
            self.log.warning("callback.lease_expired", callback_id=cid)

    def _signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def stop(signum: int, _frame: Any) -> None:
            self.log.info("daemon.signal", signal=signal.Signals(signum).name)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def stop(self) -> None:
        self.stop_event.set()


def _now() -> Any:
    from datetime import datetime

    return datetime.now(UTC)


def _redact(url: str) -> str:
    from callback_queue.store import redact_url

    return redact_url(url)


def wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
