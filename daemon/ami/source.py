"""The AMI source component: one supervised link and one reducer per `[[sources.ami]]` PBX.

Threads: the link's reader thread (asterisk-ami's, guarded) only appends relevant events to a
list; a flush thread per PBX reduces them to attempts and stores them with
`Ingestor.ingest` every `flush_interval` (100 ms) or as soon as `batch_events` wait, together
with the dead letters and the source cursor (`ami:<name>`: the time of the last event read).

Outages: after a reconnect the gap (last event before the drop .. first after) is logged. Events
AMI does not replay; the queue_log and CDR tails of the same PBX (same `system`) import the
missing calls from the files, and because both sources write the same (system, Uniqueid) row
nothing is counted twice. Without such a tail the gap is logged as not backfilled.

Reload (SIGHUP): the component is built even with no PBX configured, so a reload can add one.
A PBX added gets a source and a link; a PBX removed has its source stopped (a final flush) and
its link logged off once nothing else holds it; a PBX whose connection settings changed is
reconnected through its link (see links.py); the others are not touched. A new configuration
that cannot work (names repeated, a `[dialer.ami]` naming no PBX) is refused before anything
changes (`check_reload`).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

from callback_queue.attempts import Attempt, DeadLetter
from callback_queue.clock import Clock, SystemClock
from callback_queue.ingest import CursorWrite, Ingestor, load_cursor
from callback_queue.numbers import Normalizer

from ..app import Daemon, normalizer, register_component
from ..logs import get_logger
from .client import AmiLink
from .events import RELEVANT, AmiReducer
from .links import links_of, make_link
from .settings import AmiSourceSettings, dialer_settings

#: events the dialer reads from the same link (subscribed by daemon.ami.dialer)
DIALER_EVENTS = frozenset({"originateresponse", "dialend", "hangup"})
__all__ = ["DIALER_EVENTS", "AmiSource", "AmiSources", "check_reload", "make_link"]


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
        self.link.subscribe(RELEVANT, self._on_event)
        self.link.on_state(self._on_state)
        self.link.on_bad_packet(self._on_bad)
        self.link.acquire()

    def stop(self) -> None:
        """Stop reading (the link logs off unless the dialer still holds it) and store what was read."""
        for sink in (self._on_event, self._on_state, self._on_bad):
            self.link.unsubscribe(sink)
        self.link.release()
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self.flush(final=True)

    def reconfigure(self, settings: AmiSourceSettings, norm: Normalizer, backfilled_by: list[str]) -> None:
        """Reload: new batching, filter and number rules for the events still to come (the link's
        own settings are the registry's business)."""
        self.settings = settings
        self.reducer.queuestatus_seen = settings.filter
        self.reducer.normalizer = norm
        self.backfilled_by = backfilled_by

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            interval = self.settings.flush_interval
            self._wake.wait(interval if failures == 0 else min(30.0, interval * 2 ** failures))
            self._wake.clear()
            try:
                self.flush()
                if failures:
                    self.log.info("ami.flush_recovered", pbx=self.settings.name, after_failures=failures)
                failures = 0
            except Exception as exc:  # noqa: BLE001 - keep the events, try again later
                failures += 1
                if failures == 1:  # one line per outage (the daemon's jobs log store.unavailable too), not per try
                    self.log.error("ami.flush_failed", pbx=self.settings.name,
                                   error=f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}",
                                   note="events are kept in memory and stored once the database answers")

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
        for raw, why in self.reducer.take_rejects():  # events with values no attempt can hold
            self._packet_no += 1
            stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
            dead.append(DeadLetter(self.name, f"{stamp} connection {self.link.connects} #{self._packet_no}",
                                   raw[:65536], why))
        if events:
            # the reducer's reading of the last event's Timestamp (float() of it raised on "abc", and
            # "nan" made a cursor no JSON column takes)
            self.last_event_ts = self.reducer.last_ts
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


def check_reload(settings: Any) -> None:
    """Raise ConfigError, naming the field, for what the AMI part of `settings` cannot run with."""
    from callback_queue.errors import ConfigError

    names = [x.name for x in settings.sources.ami]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"sources.ami.name: names must be unique ({', '.join(dupes)} repeated)")
    if settings.dialer.kind == "ami":
        dialer_settings(settings)


def _backfill_files(settings: Any, pbx: str) -> list[str]:
    s = settings.sources
    return [f"{kind}:{f.system}" for kind, f in (("queue_log", s.queue_log), ("cdr", s.cdr))
            if f is not None and f.system == pbx]


class AmiSources:
    """The component: every configured PBX's source, kept in step with the configuration."""

    name = "ami"

    def __init__(self, daemon: Daemon) -> None:
        check_reload(daemon.settings)
        self.daemon = daemon
        self.links = links_of(daemon)
        self.log = get_logger("callbackd.ami")
        self.sources: dict[str, AmiSource] = {}
        norm = normalizer(daemon.settings)
        for src in daemon.settings.sources.ami:
            self.sources[src.name] = self._source(src, daemon.settings, norm)
        self._started = False

    def _source(self, src: AmiSourceSettings, settings: Any, norm: Normalizer) -> AmiSource:
        return AmiSource(src, self.links.link(src.name), self.daemon.ingestor, norm, clock=self.daemon.clock,
                         backfilled_by=_backfill_files(settings, src.name))

    def _start(self, src: AmiSource) -> None:
        if src.backfilled_by:
            self.log.info("ami.backfill", pbx=src.settings.name, relies_on=src.backfilled_by,
                          note="calls missed while the AMI link is down are imported by these file tails")
        else:
            self.log.warning("ami.no_backfill", pbx=src.settings.name,
                             note="no queue_log/CDR source with this system: an AMI outage loses calls")
        src.start()

    def start(self) -> None:
        self._started = True
        for src in self.sources.values():
            self._start(src)

    def stop(self) -> None:
        self._started = False
        for src in self.sources.values():
            src.stop()

    # -- reload ---------------------------------------------------------------------------
    def check_reload(self, new: Any) -> None:
        """Called before anything of a reload is applied: a ConfigError refuses the whole of it."""
        check_reload(new)

    def reload(self, new: Any) -> None:
        """Apply `[[sources.ami]]` and `[dialer.ami]` (already checked): add, reconnect, remove."""
        want = {s.name: s for s in new.sources.ami}
        added = [n for n in want if n not in self.sources]
        removed = [n for n in self.sources if n not in want]
        reconnected = self.links.update(new.sources.ami)
        norm = normalizer(new)
        for name, s in want.items():  # new PBXs first: the dialer may move to one of them
            try:
                if name in self.sources:
                    self.sources[name].reconfigure(s, norm, _backfill_files(new, name))
                    continue
                src = self.sources[name] = self._source(s, new, norm)
                if self._started:
                    self._start(src)
                self.log.info("ami.pbx_added", pbx=name, host=s.host, port=s.port)
            except Exception as exc:  # noqa: BLE001 - the daemon and the other PBXs go on
                self.sources.pop(name, None)
                self.log.error("ami.pbx_add_failed", pbx=name, error=f"{type(exc).__name__}: {exc}")
        self._reload_dialer(new)
        for name in removed:
            src = self.sources.pop(name)
            try:
                src.stop()
            except Exception as exc:  # noqa: BLE001
                self.log.error("ami.pbx_remove_failed", pbx=name, error=f"{type(exc).__name__}: {exc}")
            self.log.info("ami.pbx_removed", pbx=name, link_closed=src.link.users == 0)
        self.links.prune()
        if want or removed:     # (no PBX before nor after: nothing to say)
            self.log.info("ami.reloaded", added=added, removed=removed, reconnected=reconnected,
                          unchanged=sorted(n for n in want if n not in added and n not in reconnected))

    def _reload_dialer(self, new: Any) -> None:
        dialer = self.links.dialer
        if dialer is None:
            if new.dialer.kind == "ami":
                self.log.warning("ami.dialer_needs_restart", note="[dialer] kind changed to \"ami\": "
                                 "restart callbackd to start dialing through AMI")
            return
        if new.dialer.kind != "ami":
            self.log.warning("ami.dialer_needs_restart", kind=new.dialer.kind,
                             note="[dialer] kind changed: the AMI dialer goes on until callbackd restarts")
            return
        try:
            ds = dialer_settings(new)
            dialer.reload(ds, self.links.link(ds.pbx))
        except Exception as exc:  # noqa: BLE001 - the dialer keeps its previous settings
            self.log.error("ami.dialer_reload_failed", error=f"{type(exc).__name__}: {exc}")


@register_component
def _build(daemon: Daemon) -> Any:
    return AmiSources(daemon)
