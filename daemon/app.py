"""The composition root: settings in, store, clock, sources and scheduler wired together.

APScheduler only times the work (source polls, the lease sweep); the durable
state is always our tables. `main(argv) -> int` style: `Daemon.run` returns
the exit code.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from callback_queue.clock import Clock, SystemClock
from callback_queue.detection import DetectRules
from callback_queue.ingest import Ingestor
from callback_queue.numbers import Normalizer, normalizer_from
from callback_queue.queue import CallbackQueue
from callback_queue.retry import DialOutcome, RetryPolicy, RetryRule
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


def retry_policy(s: Settings) -> RetryPolicy:
    r = s.retry
    return RetryPolicy(rules={DialOutcome(k): RetryRule(v.delay, v.times) for k, v in r.rules.items()},
                       max_attempts=r.max_attempts, min_spacing=r.min_spacing)


def callback_queue(s: Settings, store: Store, clock: Clock) -> CallbackQueue:
    return CallbackQueue(store, clock, retry_policy(s), lease=s.queue.lease)


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


#: modules that register components or HTTP routes when imported (each feature adds its own)
FEATURE_MODULES: list[str] = []
#: builders called with the Daemon; each returns a component (start/stop/name) or None
COMPONENT_BUILDERS: list[Callable[[Daemon], Any]] = []


def register_component(builder: Callable[[Daemon], Any]) -> Callable[[Daemon], Any]:
    COMPONENT_BUILDERS.append(builder)
    return builder


def load_features() -> None:
    import importlib

    for name in FEATURE_MODULES:
        importlib.import_module(name)


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
        self.components: list[Any] = []
        self.scheduler: Any = None
        self.http: Any = None
        self.queue = callback_queue(settings, self.store, self.clock)
        self.services: Any = None

    def _build(self) -> None:
        from .http.app import Services
        from .sources.pipeline import TailRunner

        s = self.settings
        norm = normalizer(s)
        self.ingestor = Ingestor(self.store, self.clock, detect_rules(s))
        self.services = Services(settings=s, store=self.store, clock=self.clock, queue=self.queue)
        if s.sources.queue_log:
            src = s.sources.queue_log
            self.tails.append((TailRunner(f"queue_log:{src.system}", src.path, queue_log_parser(s, norm),
                                          self.ingestor, start_at_end=src.start_at == "end", log=self.log),
                               src.poll_interval))
        if s.sources.cdr:
            src2 = s.sources.cdr
            self.tails.append((TailRunner(f"cdr:{src2.system}", src2.path, cdr_parser(s, norm), self.ingestor,
                                          start_at_end=src2.start_at == "end", log=self.log),
                               src2.poll_interval))

    def add_job(self, name: str, fn: Callable[[], Any], seconds: float, **trigger: Any) -> None:
        """An APScheduler interval job whose failures are logged once per change, not once per tick."""
        self.scheduler.add_job(self._guard(_Job(name, fn)), "interval", seconds=seconds, id=name,
                               next_run_time=_now(), **trigger)

    def _guard(self, job: _Job) -> Any:
        def run() -> None:
            try:
                job.fn()
            except Exception as exc:  # noqa: BLE001 - a job must never take the daemon down
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
        load_features()
        self._build()
        self.scheduler = BackgroundScheduler(timezone=UTC, job_defaults={"max_instances": 1, "coalesce": True,
                                                                         "misfire_grace_time": 30})
        for runner, interval in self.tails:
            self.add_job(f"poll:{runner.name}", runner.poll, interval.total_seconds())
        self.add_job("sweep", self._sweep, self.settings.daemon.sweep_interval.total_seconds())
        for builder in COMPONENT_BUILDERS:
            comp = builder(self)
            if comp is not None:
                self.components.append(comp)
        if self.settings.http.enabled:
            from .http.app import HttpServer, create_app

            self.http = HttpServer(create_app(self.services), self.settings.http.host, self.settings.http.port)
            self.components.append(self.http)
        self._signals()
        started: list[Any] = []
        try:
            for comp in self.components:
                comp.start()
                started.append(comp)
            self.scheduler.start()
            self.log.info("daemon.started", store=_redact(self.store.url),
                          sources=[r.name for r, _ in self.tails], components=[c.name for c in self.components],
                          config=self.settings.origin)
            while not self.stop_event.wait(0.5):
                pass
        finally:
            self.log.info("daemon.stopping")
            if self.scheduler.running:
                self.scheduler.shutdown(wait=True)
            for comp in reversed(started):
                try:
                    comp.stop()
                except Exception as exc:  # noqa: BLE001 - keep stopping the others
                    self.log.error("component.stop_failed", component=comp.name, error=str(exc))
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
