"""Dispatch: APScheduler times the planner and the dialer; our tables hold the work.

Jobs (all `max_instances=1`, `coalesce=True`):
- `plan`: re-plans open callbacks into windows (every `[schedule] replan_interval`, at every window
  opening and closing, and on reload);
- `dispatch`: claims due callbacks up to the free dialer slots and places them (automatic dialers only);
- `reconcile`: asks the dialer how calls whose lease ran out ended (after a crash or a lost event).
In manual mode there is no dialer: planned callbacks become due for operators at the window start.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from callback_queue.dialing import Dialer, DialQueue, DialRequest, DialResult
from callback_queue.retry import DialOutcome

from .app import Daemon, planner, register_component
from .logs import get_logger

#: dialer kind -> builder(daemon) -> Dialer (the AMI and Twilio modules register theirs)
DIALERS: dict[str, Callable[[Daemon], Dialer]] = {}


class DialError(Exception):
    """The call could not be placed."""


class Dispatcher:
    """Claims due callbacks for an automatic dialer, places them, records how they end."""

    def __init__(self, dq: DialQueue, dialer: Dialer, *, worker: str | None = None,
                 lease: timedelta = timedelta(minutes=10), in_window: Callable[[], bool] = lambda: True) -> None:
        self.dq = dq
        self.dialer = dialer
        self.worker = worker or f"{dialer.kind}@{socket.gethostname()}"
        self.lease = lease
        self.in_window = in_window
        self.log = get_logger("callbackd.dispatch")
        self.placed = 0

    @property
    def actor(self) -> str:
        return f"dialer:{self.dialer.kind}"

    def tick(self) -> int:
        """Place as many due calls as the dialer has free slots for. Returns how many were placed."""
        if not self.in_window():
            return 0
        free = self.dialer.free_slots()
        if free <= 0:
            return 0
        requests = self.dq.claim_for_dial(self.dialer.kind, self.worker, free, lease=self.lease)
        for req in requests:
            self._place(req)
        return len(requests)

    def _place(self, req: DialRequest) -> None:
        try:
            self.dialer.place(req)
        except Exception as exc:  # noqa: BLE001 - any failure to send ends this call as failed
            self.log.warning("dial.not_placed", callback_id=req.callback_id, error=str(exc))
            self.dq.record(DialResult(req.dial_ref, DialOutcome.FAILED, {"error": str(exc)}), self.actor)
            return
        self.placed += 1
        self.log.info("dial.placed", callback_id=req.callback_id, dial_ref=req.dial_ref, attempt=req.attempt)

    def on_result(self, result: DialResult) -> None:
        cb = self.dq.record(result, self.actor)
        if cb is None:
            self.log.info("dial.stale_result", dial_ref=result.dial_ref, outcome=result.outcome.value)
        else:
            retry = {"retry_at": cb.due_at.isoformat()} if cb.state.value == "retry_wait" else {}
            self.log.info("dial.ended", callback_id=cb.id, outcome=result.outcome.value, state=cb.state.value,
                          dial_attempts=cb.dial_attempts, **retry)

    def reconcile(self) -> int:
        """Calls whose lease ran out: ask the dialer how they ended; never dial them again blindly."""
        now = self.dq.clock.now()
        done = 0
        for cb in self.dq.in_flight(self.dialer.kind):
            if cb.lease_until is None or cb.lease_until > now or cb.dial_ref is None:
                continue
            try:
                outcome = self.dialer.status(cb.dial_ref, cb.dial_started_at or now)
            except Exception as exc:  # noqa: BLE001 - try again on the next run
                self.log.warning("dial.reconcile_failed", callback_id=cb.id, error=str(exc))
                continue
            if outcome is None:
                continue
            after = self.dq.record(DialResult(cb.dial_ref, outcome, {"reconciled": True}), self.actor)
            if after is not None:  # the call's outcome came from asking the dialer, not from its own report
                self.log.info("dial.ended", callback_id=cb.id, outcome=outcome.value, state=after.state.value,
                              reconciled=True)
            done += 1
        return done

    def start(self) -> None:
        self.dialer.start(self.on_result)

    def drain(self, timeout: float) -> int:
        """On shutdown: wait for the calls this worker placed to end (their outcomes are recorded as
        they come in). Returns how many were still under way at the deadline; those stay "dialing"
        with their dial ref and are reconciled with the PBX by the next daemon, never re-dialed."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            left = [c for c in self.dq.in_flight(self.dialer.kind) if c.claimed_by == self.worker]
            if not left or time.monotonic() >= deadline:
                if left:
                    self.log.warning("dial.drain_incomplete", calls=len(left), timeout_s=timeout)
                return len(left)
            time.sleep(0.2)

    def stop(self) -> None:
        self.dialer.stop()


class Scheduling:
    """The component: the planner job and, with an automatic dialer, the dispatcher."""

    name = "scheduling"

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        s = daemon.settings
        self.log = get_logger("callbackd.schedule")
        self.planner = planner(s, daemon.store, daemon.clock) if s.schedule is not None else None
        self.dispatcher: Dispatcher | None = None
        self._dirty = threading.Event()
        kind = s.dialer.kind
        if kind != "manual":
            if kind not in DIALERS:
                raise RuntimeError(f"dialer {kind!r} is not available")
            self.dispatcher = Dispatcher(DialQueue(daemon.queue), DIALERS[kind](daemon), lease=s.dialer.lease,
                                         in_window=self._in_window)

    def _in_window(self) -> bool:
        if self.planner is None:
            return True
        now = self.daemon.clock.now()
        return any(w.contains(now) for w in self.planner.rules.windows(now - timedelta(hours=1),
                                                                       now + timedelta(minutes=1)))

    def replan(self) -> None:
        # callbacks opened while a replan runs set the flag again: plan once more for them
        for _ in range(10):
            self._dirty.clear()
            self._replan_once()
            if not self._dirty.is_set():
                return

    def _replan_once(self) -> None:
        if self.planner is None:
            return
        report = self.planner.replan()
        for cid in report.new_breaches:
            self.log.warning("planner.sla_breach", callback_id=cid)
        for cid in report.cleared:
            self.log.info("planner.sla_ok", callback_id=cid)
        if report.moved or report.new_breaches or report.cleared or report.unplaced:
            # new_sla_breaches: flagged by this plan; sla_breaches_now: every callback planned past its SLA (the
            # gauge callbackd_planner_sla_breaches); sla_ok: brought back within it by this plan
            self.log.info("planner.replanned", planned=report.planned, moved=report.moved,
                          unplaced=report.unplaced, new_sla_breaches=len(report.new_breaches),
                          sla_breaches_now=report.breaches_now, sla_ok=len(report.cleared))

    def start(self) -> None:
        d = self.daemon
        sc = d.settings.schedule
        d.add_job("plan", self.replan, sc.replan_interval.total_seconds() if sc else 60.0, singleton=True)
        if self.planner is not None:
            self._window_jobs()
        if self.dispatcher is not None:
            self.dispatcher.start()
            d.add_job("dispatch", self.dispatcher.tick, d.settings.dialer.tick.total_seconds())
            d.add_job("reconcile", self.dispatcher.reconcile,
                      max(1.0, min(30.0, d.settings.dialer.lease.total_seconds() / 2)))

    def _window_jobs(self) -> None:
        """Re-plan at every window opening and closing of the next day (re-armed daily)."""
        assert self.planner is not None
        now = self.daemon.clock.now()
        sched = self.daemon.scheduler
        for job in sched.get_jobs():
            if job.id.startswith("window:"):
                job.remove()
        for w in self.planner.rules.windows(now, now + timedelta(days=1, hours=1)):
            for edge, what in ((w.start, "open"), (w.end, "close")):
                if edge > now:
                    sched.add_job(self._edge, "date", run_date=edge, args=[what, w.label],
                                  id=f"window:{what}:{edge.isoformat()}", replace_existing=True)
        sched.add_job(self._window_jobs, "date", run_date=now + timedelta(days=1), id="window:rearm",
                      replace_existing=True)

    def _edge(self, what: str, label: str) -> None:
        self.log.info(f"window.{what}ed" if what == "open" else "window.closed", window=label)
        if self.daemon.is_leader:
            self.replan()

    def callbacks_opened(self, ids: list[int]) -> None:
        """New callbacks are planned at once, not at the next replan tick."""
        self._dirty.set()
        self.daemon.run_job_now("plan")

    def reload(self, settings: Any) -> None:
        """New windows: rebuild the rules and re-plan open work now (nothing is dialed twice: calls
        under way keep their place, and claims are still leases)."""
        self.planner = planner(settings, self.daemon.store, self.daemon.clock) if settings.schedule else None
        if self.planner is not None:
            self._window_jobs()
            self.replan()

    def stop(self) -> None:
        # the scheduler is already shut down (no new claims): let the calls under way finish first
        if self.dispatcher is not None:
            left = self.dispatcher.drain(self.daemon.settings.dialer.drain_timeout.total_seconds())
            if not left:
                self.log.info("dial.drained")
            self.dispatcher.stop()


@register_component
def _build(daemon: Daemon) -> Any:
    return Scheduling(daemon)
