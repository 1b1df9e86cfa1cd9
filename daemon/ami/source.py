"""The AMI source component: one supervised link and one reducer per `[[sources.ami]]` PBX.

Threads: the link's reader thread (asterisk-ami's, guarded) only appends relevant events to a
list; a flush thread per PBX reduces them to attempts and stores them with
`Ingestor.ingest` every `flush_interval` (100 ms) or as soon as `batch_events` wait, together
with the dead letters and the source cursor (`ami:<name>`: the time of the last event read).

Outages: after a reconnect the gap (last event before the drop .. first after) is logged. Events
AMI does not replay; the queue_log and CDR tails of the same PBX (same `system`) import the
missing calls from the files, and because both sources write the same (system, Uniqueid) row
nothing is counted twice. Without such a tail the gap is logged as not backfilled.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from callback_queue.attempts import Attempt, DeadLetter
from callback_queue.clock import Clock, SystemClock
from callback_queue.ingest import CursorWrite, Ingestor, load_cursor
from callback_queue.numbers import Normalizer

from ..app import Daemon, normalizer, register_component
from ..logs import get_logger
from .client import AmiLink
from .events import EVENT_MASK, RELEVANT, AmiReducer, filter_regexes
from .settings import AmiSourceSettings

#: events the dialer reads from the same link (subscribed by daemon.ami.dialer)
DIALER_EVENTS = frozenset({"originateresponse", "dialend", "hangup"})


def make_link(s: AmiSourceSettings, *, clock: Callable[[], float] = time.time) -> AmiLink:
    secret = s.secret.get_secret_value() if s.secret is not None else ""
    return AmiLink(s.name, s.host, s.port, s.username, secret, socket_timeout=s.socket_timeout,
                   ping_interval=s.effective_ping_interval, backoff_initial=s.backoff_initial,
                   backoff_max=s.backoff_max, events=EVENT_MASK if s.filter else "on",
                   filters=filter_regexes() if s.filter else [], clock=clock)


class AmiSource:
    """Events of one PBX -> attempts in the store."""

    def __init__(self, settings: AmiSourceSettings, link: AmiLink, ingestor: Ingestor, norm: Normalizer, *,
                 clock: Clock | None = None, backfilled_by: list[str] | None = None) -> None:
        self.settings = settings
        self.name = f"ami:{settings.name}"
        self.link = link
        self.ingestor = ingestor
        self.clock = clock or SystemClock()
        self.reducer = AmiReducer(system=settings.name, normalizer=norm, queuestatus_seen=settings.filter)
        self.backfilled_by = backfilled_by or []
        self.log = get_logger("callbackd.ami").bind(pbx=settings.name)
        self._events: list[tuple[str, dict[str, str], float]] = []
        self._dead: list[DeadLetter] = []
        self._retry: list[Attempt] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._packet_no = 0
        self.last_event_ts: float | None = None
        self._down_since: float | None = None
        self._cursor_written = 0.0
        self.stats = {"events": 0, "attempts": 0, "dead_letters": 0, "batches": 0}
        saved = load_cursor(ingestor.store, self.name)
        if saved is not None and saved.state:
            self.last_event_ts = saved.state.get("last_event_ts")
        link.subscribe(RELEVANT, self._on_event)
        link.on_state(self._on_state)
        prior_bad = link.on_bad
        link.on_bad = self._on_bad if prior_bad is None else _both(prior_bad, self._on_bad)

    # -- reader thread --------------------------------------------------------------------
    def _on_event(self, name: str, keys: dict[str, str], read_at: float) -> None:
        with self._lock:
            self._events.append((name, keys, read_at))
            n = len(self._events)
        if n >= self.settings.batch_events:
            self._wake.set()

    def _on_bad(self, raw: bytes, why: str) -> None:
        with self._lock:
            self._packet_no += 1
            stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
            pos = f"{stamp} connection {self.link.connects} #{self._packet_no}"
            self._dead.append(DeadLetter(self.name, pos, raw[:65536], why))
        self.log.warning("ami.bad_packet", reason=why, bytes=len(raw))
        self._wake.set()

    def _on_state(self, up: bool) -> None:
        now = self.clock.now().timestamp()
        if not up:
            self._down_since = self.last_event_ts or now
            return
        if self._down_since is None and self.last_event_ts is None:
            return
        since = self._down_since or self.last_event_ts or now
        self._down_since = None
        gap = {"gap_from": datetime.fromtimestamp(since, UTC).isoformat(timespec="seconds"),
               "gap_seconds": round(max(0.0, now - since), 1)}
        if self.backfilled_by:
            self.log.info("ami.gap_backfilled_by_files", relies_on=self.backfilled_by, **gap)
        else:
            self.log.warning("ami.gap_not_backfilled", hint="configure [sources.queue_log] (or [sources.cdr]) "
                             f"with system = {self.settings.name!r} so calls missed while the link was down "
                             "are imported from the files", **gap)

    # -- flush thread ---------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"ami-flush-{self.settings.name}", daemon=True)
        self._thread.start()
        self.link.acquire()

    def stop(self) -> None:
        self.link.release()
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self.flush(final=True)

    def _run(self) -> None:
        interval = self.settings.flush_interval
        failures = 0
        while not self._stop.is_set():
            self._wake.wait(interval if failures == 0 else min(30.0, interval * 2 ** failures))
            self._wake.clear()
            try:
                self.flush()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - keep the events, try again later
                failures += 1
                self.log.error("ami.flush_failed", error=f"{type(exc).__name__}: {exc}", failures=failures)

    def flush(self, *, final: bool = False) -> int:
        """Reduce what was read and store it (one transaction). Returns the attempts stored."""
        with self._lock:
            events, self._events = self._events, []
            dead, self._dead = self._dead, []
        feed = self.reducer.feed
        attempts = self._retry
        self._retry = []
        for name, keys, read_at in events:
            a = feed(name, keys, read_at)
            if a is not None:
                attempts.append(a)
        if events:
            last = events[-1]
            stamp = last[1].get("timestamp")
            self.last_event_ts = float(stamp) if stamp else last[2]
        now = self.clock.now().timestamp()
        attempts.extend(self.reducer.settle_all() if final else self.reducer.expire(now))
        cursor = None
        if events and (now - self._cursor_written >= 1.0 or final):
            cursor = CursorWrite(self.name, None, None, None, 0, None,
                                 {"last_event_ts": self.last_event_ts, "events": self.reducer.events})
        if not attempts and not dead and cursor is None:
            return 0
        try:
            result = self.ingestor.ingest(attempts, dead, cursor)
        except Exception:
            self._retry = attempts[-100_000:]
            with self._lock:
                self._dead = dead + self._dead
            raise
        if cursor is not None:
            self._cursor_written = now
        self.stats["events"] += len(events)
        self.stats["attempts"] += len(attempts)
        self.stats["dead_letters"] += len(dead)
        self.stats["batches"] += 1
        for cid in result.opened:
            self.log.info("callback.opened", source=self.name, callback_id=cid)
        return len(attempts)


def _both(a: Callable[[bytes, str], None], b: Callable[[bytes, str], None]) -> Callable[[bytes, str], None]:
    def call(raw: bytes, why: str) -> None:
        a(raw, why)
        b(raw, why)

    return call


# -- links shared by the source component and the dialer -----------------------------------
_LINKS: weakref.WeakKeyDictionary[Any, dict[str, AmiLink]] = weakref.WeakKeyDictionary()


def link_for(daemon: Daemon, name: str) -> AmiLink:
    """The one link to PBX `name` for this daemon (created on first use)."""
    links = _LINKS.setdefault(daemon, {})
    if name not in links:
        by_name = {s.name: s for s in daemon.settings.sources.ami}
        links[name] = make_link(by_name[name])
    return links[name]


class AmiSources:
    """The component: every configured PBX's source."""

    name = "ami"

    def __init__(self, daemon: Daemon) -> None:
        s = daemon.settings
        norm = normalizer(s)
        files = []
        self.sources: list[AmiSource] = []
        names = [x.name for x in s.sources.ami]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            from callback_queue.errors import ConfigError

            raise ConfigError(f"sources.ami: names must be unique ({', '.join(dupes)} repeated)")
        for src in s.sources.ami:
            files = [f"{kind}:{f.system}" for kind, f in (("queue_log", s.sources.queue_log), ("cdr", s.sources.cdr))
                     if f is not None and f.system == src.name]
            self.sources.append(AmiSource(src, link_for(daemon, src.name), daemon.ingestor, norm, clock=daemon.clock,
                                          backfilled_by=files))
        self.log = get_logger("callbackd.ami")

    def start(self) -> None:
        for src in self.sources:
            if src.backfilled_by:
                self.log.info("ami.backfill", pbx=src.settings.name, relies_on=src.backfilled_by,
                              note="calls missed while the AMI link is down are imported by these file tails")
            else:
                self.log.warning("ami.no_backfill", pbx=src.settings.name,
                                 note="no queue_log/CDR source with this system: an AMI outage loses calls")
            src.start()

    def stop(self) -> None:
        for src in self.sources:
            src.stop()


@register_component
def _build(daemon: Daemon) -> Any:
    if not daemon.settings.sources.ami:
        return None
    return AmiSources(daemon)
