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
    return _open_store(s, s.store.statement_timeout.total_seconds())


def open_bulk_store(s: Settings) -> Store:
    """For `db upgrade` and `import`, whose statements may legitimately run long (an index over a big
    table, a backfill's upserts): no statement timeout (and so no client-side answer deadline); the link
    bounds still end them if the link or the server's host dies."""
    return _open_store(s, 0)


def _open_store(s: Settings, statement_timeout: float, busy_timeout_ms: int | None = None) -> Store:
    st = s.store
    return Store(s.store_url, busy_timeout_ms=st.busy_timeout_ms if busy_timeout_ms is None else busy_timeout_ms,
                 pool_size=st.pool_size, statement_timeout=statement_timeout,
                 link_timeout=st.link_timeout.total_seconds())


def open_check_store(s: Settings) -> Store:
    """For `doctor`: the daemon's bounds, and a SQLite lock wait short enough to report on."""
    return _open_store(s, s.store.statement_timeout.total_seconds(), busy_timeout_ms=5000)


def retry_policy(s: Settings) -> RetryPolicy:
    r = s.retry
    return RetryPolicy(rules={DialOutcome(k): RetryRule(v.delay, v.times) for k, v in r.rules.items()},
                       max_attempts=r.max_attempts, min_spacing=r.min_spacing)


def callback_queue(s: Settings, store: Store, clock: Clock) -> CallbackQueue:
    return CallbackQueue(store, clock, retry_policy(s), lease=s.queue.lease, planned=s.schedule is not None)


def schedule_rules(s: Settings, store: Store | None = None, clock: Clock | None = None) -> Any:
    """The configured windows as ScheduleRules (learned windows need the store to look at traffic)."""
    from datetime import date, datetime, timedelta
    from zoneinfo import ZoneInfo

    from callback_queue.windows import Capacity, ScheduleRules, TimeRange

    sc = s.schedule
    assert sc is not None
    tz = ZoneInfo(s.daemon.timezone)

    def ranges(items: list[str]) -> tuple[TimeRange, ...]:
        return tuple(TimeRange.parse(x) for x in items)

    closures = []
    for item in sc.closures:
        if "/" in item:
            a, b = (datetime.fromisoformat(x) for x in item.split("/"))
        else:
            d = date.fromisoformat(item)
            a, b = datetime.combine(d, datetime.min.time()), datetime.combine(d + timedelta(days=1),
                                                                              datetime.min.time())
        closures.append(tuple(x.replace(tzinfo=tz) if x.tzinfo is None else x for x in (a, b)))
    cap = sc.capacity
    rules = ScheduleRules(
        tz=tz, workday=ranges(sc.workday), restday=ranges(sc.restday), holiday=ranges(sc.holiday),
        weekdays={k: ranges(v) for k, v in sc.weekdays.items()}, quiet=ranges(sc.quiet_hours),
        closures=tuple((a.astimezone(UTC), b.astimezone(UTC)) for a, b in closures),
        capacity=Capacity(fixed=cap.fixed, agents=cap.agents, handle_time=cap.handle_time),
        country=sc.country, subdivision=sc.subdivision,
        extra_workdays=frozenset(date.fromisoformat(x) for x in sc.extra_workdays),
    )
    if sc.learned.enabled and store is not None:
        from callback_queue.learning import learn_windows

        rules = learn_windows(store, clock or SystemClock(), rules, weeks=sc.learned.weeks,
                              allowed=ranges(sc.learned.allowed), min_hours=sc.learned.min_hours).rules
    return rules


def planner(s: Settings, store: Store, clock: Clock) -> Any:
    from callback_queue.planner import Planner

    sc = s.schedule
    assert sc is not None
    return Planner(store, clock, schedule_rules(s, store, clock), sla=sc.sla, horizon=sc.horizon,
                   min_spacing=s.retry.min_spacing)


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
FEATURE_MODULES: list[str] = ["daemon.dispatch", "daemon.ami.source", "daemon.ami.dialer", "daemon.dialers.twilio"]
FEATURE_MODULES.append("daemon.ami.doctor")
FEATURE_MODULES.append("sms.feature")  # SMS outbox, rating page, Twilio webhooks (issue 5)
FEATURE_MODULES += ["daemon.http.api", "daemon.http.console", "daemon.http.metrics"]  # console, API (issue 6)
FEATURE_MODULES.append("daemon.sources.twilio_calls")  # Twilio call-log source (issue 5 item 7)
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
        self.leading = False    # leader duties run (`_lead`); set in run()
        self.stop_event = threading.Event()
        self.reload_requested = threading.Event()
        from .systemd import Notifier

        self.notifier = Notifier()
        self.status_line = "starting"
        self._sent_status = ""
        self._unhealthy: str | None = None
        self.last_beat = 0.0
        self._last_ping = 0.0
        self.tails: list[Any] = []
        self.components: list[Any] = []
        self.scheduler: Any = None
        self.http: Any = None
        self.queue = callback_queue(settings, self.store, self.clock)
        self.services: Any = None
        self._outage: float | None = None  # since when jobs find the store unusable (monotonic)
        self._outage_lock = threading.Lock()
        self._overruns = _Overruns(self.log)

    def _build(self) -> None:
        from .http.app import Services

        s = self.settings
        self.ingestor = Ingestor(self.store, self.clock, detect_rules(s), on_opened=self._opened)
        # the daemon's queue and ingestor log each callback's changes (a CLI command's do not: its stdout is
        # its output)
        self.queue.log = get_logger("callbackd.queue")
        self.ingestor.log = get_logger("callbackd.ingest")
        self.services = Services(settings=s, store=self.store, clock=self.clock, queue=self.queue)
        self.tails = self._tail_runners(s)

    def _tail_runners(self, s: Settings) -> list[tuple[Any, Any]]:
        from .sources.pipeline import TailRunner

        norm = normalizer(s)
        tails: list[tuple[Any, Any]] = []
        if s.sources.queue_log:
            src = s.sources.queue_log
            tails.append((TailRunner(f"queue_log:{src.system}", src.path, queue_log_parser(s, norm),
                                     self.ingestor, start_at_end=src.start_at == "end", log=self.log),
                          src.poll_interval))
        if s.sources.cdr:
            src2 = s.sources.cdr
            tails.append((TailRunner(f"cdr:{src2.system}", src2.path, cdr_parser(s, norm), self.ingestor,
                                     start_at_end=src2.start_at == "end", log=self.log),
                          src2.poll_interval))
        return tails

    def _reload_sources(self, new: Settings) -> None:
        """Files added, removed or changed: stop the old tails (their positions are committed) and start
        the new ones from the positions in the database."""
        for runner, _ in self.tails:
            if self.scheduler.get_job(f"poll:{runner.name}") is not None:
                self.scheduler.remove_job(f"poll:{runner.name}")
            runner.close()
        self.tails = self._tail_runners(new)
        for runner, interval in self.tails:
            self.add_job(f"poll:{runner.name}", runner.poll, interval.total_seconds(), singleton=True)
        self.log.info("sources.reloaded", sources=[r.name for r, _ in self.tails])

    def _opened(self, ids: list[int]) -> None:
        for comp in self.components:
            hook = getattr(comp, "callbacks_opened", None)
            if hook is not None:
                hook(ids)

    def run_job_now(self, name: str) -> None:
        """Bring an interval job forward (e.g. plan new callbacks without waiting for the next tick)."""
        if self.scheduler is not None and self.scheduler.get_job(name) is not None:
            self.scheduler.modify_job(name, next_run_time=_now())

    def add_job(self, name: str, fn: Callable[[], Any], seconds: float, *, singleton: bool = False,
                **trigger: Any) -> None:
        """An APScheduler interval job whose failures are logged once per change, not once per tick.
        A singleton job runs only on the leader (several daemons on one PostgreSQL)."""
        if singleton:
            inner = fn

            def fn() -> Any:
                return inner() if self.is_leader else None

        self.scheduler.add_job(self._guard(_Job(name, fn)), "interval", seconds=seconds, id=name,
                               next_run_time=_now(), **trigger)

    @property
    def is_leader(self) -> bool:
        """Leader duties run: the lease is held and the daemon has taken over (`_lead`)."""
        return self.leading and self.leader.is_leader

    def _lead(self) -> None:
        was = self.leading
        now = self.leader.check()
        if not now:
            self.leading = False
        elif not was:
            # another instance may have moved the files on: resume from the committed cursors. The duties
            # start only after that (`leading`): a poll tick between the lease and the reopening would read
            # with the old runner while it is closed under it
            self._reopen_tails()
            self.leading = True
            self.run_job_now("plan")

    def _reopen_tails(self) -> None:
        from .sources.pipeline import TailRunner

        fresh = []
        for runner, interval in self.tails:
            runner.close()
            fresh.append((TailRunner(runner.name, runner.path, runner.parser, self.ingestor,
                                     log=self.log), interval))
            self.scheduler.modify_job(f"poll:{runner.name}", func=self._guard(_Job(
                f"poll:{runner.name}", self._leader_only(fresh[-1][0].poll))))
        self.tails = fresh

    def _leader_only(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            return fn() if self.is_leader else None

        return run

    def _guard(self, job: _Job) -> Any:
        from callback_queue.errors import StoreError

        def run() -> None:
            self._overruns.begin(job.name)
            try:
                job.fn()
            except Exception as exc:  # noqa: BLE001 - a job must never take the daemon down
                job.failures += 1
                if isinstance(exc, StoreError) and exc.retryable:
                    self._store_down(job.name, exc)  # one line per outage, not one per job (or per tick)
                    return
                msg = f"{type(exc).__name__}: {exc}"
                if msg != job.last_error:
                    self.log.error("job.failed", job=job.name, error=msg, failures=job.failures)
                    job.last_error = msg
            else:
                if job.last_error is not None:
                    self.log.info("job.recovered", job=job.name, after_failures=job.failures)
                job.failures, job.last_error = 0, None
            finally:
                self._overruns.done(job.name)
                if self._outage is not None and self.store.outage is None:
                    self._store_up()

        return run

    def _store_down(self, job: str, exc: Exception) -> None:
        import time

        with self._outage_lock:
            if self._outage is not None:
                return
            self._outage = time.monotonic()
        self.log.error("store.unavailable", error=self.store.outage or str(exc).splitlines()[0], job=job,
                       note="jobs retry at their next tick; nothing is lost; the recovery is logged once")

    def _store_up(self) -> None:
        import time

        with self._outage_lock:
            since, self._outage = self._outage, None
        if since is not None:
            self.log.info("store.recovered", after_seconds=round(time.monotonic() - since, 1))

    def run(self) -> int:
        from apscheduler.schedulers.background import BackgroundScheduler

        self.store.require_current()
        load_features()
        self._build()
        self.scheduler = BackgroundScheduler(timezone=UTC, job_defaults={"max_instances": 1, "coalesce": True,
                                                                         "misfire_grace_time": 30})
        import logging

        logging.getLogger("apscheduler.scheduler").addFilter(self._overruns)
        logging.getLogger("psycopg").addFilter(_echo_of_raised_error)
        from .leader import Leadership

        self.leader = Leadership(self.store, lease=self.settings.daemon.leader_lease)
        self.leader.check()
        self.leading = self.leader.is_leader
        self.add_job("leader", self._lead, max(1.0, self.settings.daemon.leader_lease.total_seconds() / 3))
        for runner, interval in self.tails:
            self.add_job(f"poll:{runner.name}", runner.poll, interval.total_seconds(), singleton=True)
        self.add_job("sweep", self._sweep, self.settings.daemon.sweep_interval.total_seconds())
        self.add_job("heartbeat", self._heartbeat, self._heartbeat_every())
        for builder in COMPONENT_BUILDERS:
            comp = builder(self)
            if comp is not None:
                self.components.append(comp)
        if self.settings.http.enabled:
            from .http.app import HttpServer, create_app

            self.http = HttpServer(create_app(self.services), self.settings.http.host, self.settings.http.port)
            self.components.append(self.http)
        self._signals()
        self._write_pid()
        started: list[Any] = []
        try:
            for comp in self.components:
                comp.start()
                started.append(comp)
            self.scheduler.start()
            self.log.info("daemon.started", store=_redact(self.store.url),
                          sources=[r.name for r, _ in self.tails], components=[c.name for c in self.components],
                          config=self.settings.origin)
            self._calendar_notes()
            src = self.settings.sources
            if not (src.queue_log or src.cdr or src.ami or self.settings.twilio_source.enabled):
                self.log.warning("daemon.no_sources", hint="nothing to watch: set [sources.queue_log] path, "
                                 "[sources.cdr] path, a [[sources.ami]] PBX or [twilio_source] enabled")
            self._heartbeat()
            self.notifier.ready(self.status_line)
            while not self.stop_event.wait(0.5):
                if self.reload_requested.is_set():
                    self.reload_requested.clear()
                    self.notifier.reloading()
                    self.reload()
                    self.notifier.ready(self.status_line)
                self._supervise()
        finally:
            self.notifier.stopping()
            self.log.info("daemon.stopping")
            if self.scheduler.running:
                self.scheduler.shutdown(wait=True)
            logging.getLogger("apscheduler.scheduler").removeFilter(self._overruns)
            logging.getLogger("psycopg").removeFilter(_echo_of_raised_error)
            for comp in reversed(started):
                try:
                    comp.stop()
                except Exception as exc:  # noqa: BLE001 - keep stopping the others
                    self.log.error("component.stop_failed", component=comp.name, error=str(exc))
            for runner, _ in self.tails:
                runner.close()
            self.leader.release()
            self.store.dispose()
            self._remove_pid()
            self.notifier.close()
            self.log.info("daemon.stopped")
        return 0

    # -- health: the watchdog is pinged only while the daemon really works ---------------------------
    def _heartbeat_every(self) -> float:
        wd = self.notifier.watchdog_interval
        return min(5.0, wd / 4) if wd else 5.0

    def _heartbeat(self) -> None:
        """A job through the scheduler and a write transaction: if either wedges, the beats stop."""
        import time

        with self.store.write() as conn:
            conn.exec_driver_sql("SELECT 1")
        due = len(self.queue.list(due=True, limit=1000))
        self.status_line = (f"watching {', '.join(r.name for r, _ in self.tails) or 'no files'}; "
                            f"{due}{'+' if due >= 1000 else ''} callbacks due"
                            + "".join(f"; {x}" for c in self.components for x in getattr(c, "status", lambda: [])()))
        self.last_beat = time.monotonic()

    def healthy(self) -> tuple[bool, str]:
        import time

        if self.scheduler is None or not self.scheduler.running:
            return False, "scheduler stopped"
        age = time.monotonic() - self.last_beat
        # stale after one watchdog interval (four missed beats): systemd then sees the wedge within two
        if age > max(3 * self._heartbeat_every(), self.notifier.watchdog_interval or 15.0):
            return False, f"no heartbeat for {age:.0f} s"
        for comp in self.components:
            alive = getattr(comp, "alive", None)
            if alive is not None and not alive():
                return False, f"{comp.name} is dead"
        return True, "ok"

    def _supervise(self) -> None:
        import time

        ok, why = self.healthy()
        if ok:
            if self.notifier.watchdog_interval and time.monotonic() - self._last_ping >= \
                    self.notifier.watchdog_interval / 2:
                self.notifier.watchdog()
                self._last_ping = time.monotonic()
            if self.status_line != self._sent_status:
                self.notifier.status(self.status_line)
                self._sent_status = self.status_line
        elif _gist(why) != _gist(self._unhealthy):  # "no heartbeat for 16 s", "...17 s": one line, not one a second
            self.log.error("daemon.unhealthy", reason=why)
            self.notifier.status(f"unhealthy: {why}")
        if ok and self._unhealthy is not None:
            self.log.info("daemon.healthy", was=self._unhealthy)
        self._unhealthy = None if ok else why

    def reload(self) -> None:
        """Re-read the configuration (SIGHUP): windows, rules and the like change without a restart.

        Components check the new configuration first (`check_reload`, which builds what it needs), so a
        bad one is refused as a whole before anything changes: one `daemon.reload_failed` line. A
        component whose `reload` still fails keeps its previous setup while the rest runs the new one:
        that is said in a `daemon.reload_failed` line per component, and `daemon.reloaded` is not logged."""
        from callback_queue.errors import ConfigError

        from .settings import load_settings

        origin = self.settings.origin
        try:
            new = load_settings(None if origin == "<defaults>" else origin)
            for comp in self.components:  # refuse the whole new config before anything changes
                if hasattr(comp, "check_reload"):
                    comp.check_reload(new)
        except ConfigError as exc:
            self.log.error("daemon.reload_failed", error=str(exc), kept=origin)
            return
        except Exception as exc:  # noqa: BLE001 - a check that broke: nothing has changed yet
            self.log.error("daemon.reload_failed", error=f"{type(exc).__name__}: {exc}", kept=origin)
            return
        old, self.settings = self.settings, new
        self.queue.retry = retry_policy(new)
        self.queue.lease = new.queue.lease
        self.queue.planned = new.schedule is not None
        if self.services is not None:
            self.services.settings = new
        self.ingestor.rules = detect_rules(new)
        if (old.sources.queue_log, old.sources.cdr, old.detect) != (new.sources.queue_log, new.sources.cdr,
                                                                     new.detect):
            self._reload_sources(new)
        changed = sorted(k for k in type(new).model_fields if getattr(old, k) != getattr(new, k))
        failed = []
        for comp in self.components:
            if hasattr(comp, "reload"):
                try:
                    comp.reload(new)
                except Exception as exc:  # noqa: BLE001 - one component's failure must not take the others down
                    name = getattr(comp, "name", type(comp).__name__)
                    failed.append(name)
                    self.log.error("daemon.reload_failed", component=name, error=f"{type(exc).__name__}: {exc}",
                                   kept=f"{name} runs with its previous settings", changed=changed,
                                   inconsistent=f"the new configuration is in effect except in {name}: "
                                                "fix the file and reload, or restart")
        if not failed:
            self.log.info("daemon.reloaded", changed=changed)
        if "schedule" in changed:
            self._calendar_notes()

    def _calendar_notes(self) -> None:
        """A year the planning horizon reaches whose official calendar `holidays` does not have yet (China's
        State Council schedule: its working weekends unknown) is said once at start and at each reload."""
        from callback_queue.holiday_calendar import log_provisional

        try:
            log_provisional(self.log, self.settings.schedule, self.clock.now().astimezone(self.settings.tz).date())
        except Exception as exc:  # noqa: BLE001 - a note, never a reason not to run
            self.log.warning("calendar.check_failed", error=f"{type(exc).__name__}: {exc}")

    def pid_path(self) -> Any:
        return self.settings.daemon.state_dir / "callbackd.pid"

    def _write_pid(self) -> None:
        import os

        try:
            self.pid_path().parent.mkdir(parents=True, exist_ok=True)
            self.pid_path().write_text(f"{os.getpid()}\n")
        except OSError as exc:
            self.log.warning("daemon.pidfile", error=str(exc))

    def _remove_pid(self) -> None:
        import contextlib

        with contextlib.suppress(OSError):
            self.pid_path().unlink()

    def _sweep(self) -> None:
        released = self.queue.sweep()
        for cid in released:
            self.log.info("callback.lease_expired", callback_id=cid,
                          note="the claim's lease ran out: back in the queue")

    def _signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def stop(signum: int, _frame: Any) -> None:
            self.log.info("daemon.signal", signal=signal.Signals(signum).name)
            self.stop_event.set()

        def hup(signum: int, _frame: Any) -> None:
            self.reload_requested.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)

    def stop(self) -> None:
        self.stop_event.set()


class _Overruns:
    """A filter for APScheduler's log, which warns at every tick a job is still running ("skipped: maximum
    number of running instances reached"): a stalled database made that one line per job per tick. Now one
    warning once a job has been running `WARN_AFTER` seconds past its tick, one info when all caught up."""

    WARN_AFTER = 5.0

    def __init__(self, log: Any) -> None:
        self.log = log
        self.running: dict[str, float] = {}  # job -> when its current run started (monotonic)
        self.late: set[str] = set()
        self.skipped = 0
        self.warned = False
        self._lock = threading.Lock()

    def begin(self, name: str) -> None:
        import time

        with self._lock:
            self.running[name] = time.monotonic()

    def filter(self, record: Any) -> bool:
        import time

        if "maximum number of running instances" not in str(record.msg):
            return True
        job = record.args[0] if isinstance(record.args, tuple) and record.args else None
        name = str(getattr(job, "id", job))
        with self._lock:
            self.skipped += 1
            self.late.add(name)
            busy = time.monotonic() - self.running.get(name, time.monotonic())
            warn = not self.warned and busy >= self.WARN_AFTER
            self.warned = self.warned or warn
        if warn:
            self.log.warning("jobs.overrun", job=name, running_s=round(busy, 1), note="still running at its next "
                             "tick (a stalled database or link?); skipped ticks are counted, not logged one by one")
        return False

    def done(self, name: str) -> None:
        with self._lock:
            self.running.pop(name, None)
            if name not in self.late:
                return
            self.late.discard(name)
            if self.late:
                return
            skipped, warned = self.skipped, self.warned
            self.skipped, self.warned = 0, False
        if warned:
            self.log.info("jobs.caught_up", skipped_ticks=skipped)


def _gist(reason: str | None) -> str:
    """A health reason without its figures."""
    import re

    return re.sub(r"\d+(\.\d+)?", "#", reason or "")


def _echo_of_raised_error(record: Any) -> bool:
    """psycopg warns "error ignored terminating <Pipeline>: the connection is lost" only while the error that
    lost the connection is already being raised (and reported once, as store.unavailable): drop the echo."""
    return not str(record.msg).startswith("error ignored terminating")


def _now() -> Any:
    from datetime import datetime

    return datetime.now(UTC)


def _redact(url: str) -> str:
    from callback_queue.store import redact_url

    return redact_url(url)
