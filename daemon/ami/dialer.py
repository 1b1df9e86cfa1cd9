"""The "ami" dialer: callbacks placed by the PBX with AMI Originate (`[dialer] kind = "ami"`).

Each call is one `Originate` with `ActionID = dial_ref`, `ChannelId = <dial_ref>-ch` (so every
event of our channel carries a Uniqueid we chose, CAPTURES step 21) and `Async: true`. How it
ended (CAPTURES "Outbound callbacks"):

- citizen-first: the OriginateResponse is the citizen's. Reason 4 reached, 3 no-answer (rang until
  the Originate Timeout), 5 busy, 8 congestion, 0 (and anything else) failed - unless a DialEnd
  of our channel explains the 0 (a callee who rang and hung up is NOANSWER, step 12): the
  dialer waits `settle_seconds` for it, since the two arrive in either order.
- agent-first: the OriginateResponse is the *agent's* (Success/4 as soon as the agent answers,
  steps 17-19). The citizen's outcome is the DialEnd whose Uniqueid is our channel:
  ANSWER reached, BUSY busy, NOANSWER/CANCEL no-answer, CONGESTION congestion, else failed.
  An agent who does not answer (Failure/3, step 20) never rang the citizen: reported as failed
  with `leg = "agent"` in the detail.

Pacing: `free_slots()` is 0 while the link is down; otherwise the cap on concurrent calls minus
the calls under way, and, with `queue` set, the queue's free agents (QueueSummary `Available`
minus callers already waiting, minus our calls still looking for an agent).

Reload: new `[dialer.ami]` values apply to the next call (a call under way keeps the mode it was
placed with). Another `pbx`: the dialer moves to that PBX's link; calls under way on the old one
are left to the reconcile path, as after a restart (their lease runs out, `status()` asks).
"""

from __future__ import annotations

import queue as queue_mod
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import phonenumbers

from callback_queue.dialing import DialRequest, DialResult, OutcomeSink
from callback_queue.retry import DialOutcome

from ..app import Daemon
from ..dispatch import DIALERS, DialError
from ..logs import get_logger
from .client import AmiError, AmiLink, AmiNoReply
from .links import links_of
from .settings import AmiDialerSettings, dialer_settings
from .source import DIALER_EVENTS

REASONS = {4: DialOutcome.REACHED, 3: DialOutcome.NO_ANSWER, 5: DialOutcome.BUSY, 8: DialOutcome.CONGESTION}
DIAL_STATUS = {"ANSWER": DialOutcome.REACHED, "BUSY": DialOutcome.BUSY, "NOANSWER": DialOutcome.NO_ANSWER,
               "CANCEL": DialOutcome.NO_ANSWER, "CONGESTION": DialOutcome.CONGESTION,
               "CHANUNAVAIL": DialOutcome.FAILED}


def channel_id(dial_ref: str) -> str:
    return f"{dial_ref}-ch"


@dataclass(slots=True)
class _Call:
    req: DialRequest
    chan_id: str
    placed_at: float
    mode: str = "agent-first"
    response: str | None = None          # OriginateResponse Response
    reason: int | None = None            # OriginateResponse Reason
    leg_status: str | None = None        # DialEnd of the originated leg (DestUniqueid = ours)
    citizen_status: str | None = None    # agent-first: DialEnd of our channel's Dial to the citizen
    settle_at: float | None = None
    unanswered: bool = False             # the Originate was sent but its Response never came
    detail: dict[str, Any] = field(default_factory=dict)


class AmiDialer:
    kind = "ami"

    def __init__(self, link: AmiLink, settings: AmiDialerSettings, *, region: str = "CN") -> None:
        self.link = link
        self.s = settings
        self.region = region
        self.log = get_logger("callbackd.ami.dialer").bind(pbx=link.name)
        self._calls: dict[str, _Call] = {}
        self._by_chan: dict[str, str] = {}
        self._done: OrderedDict[str, DialOutcome] = OrderedDict()
        self._lock = threading.Lock()
        self._inbox: queue_mod.Queue[tuple[str, dict[str, str]] | None] = queue_mod.Queue()
        self._on_result: OutcomeSink | None = None
        self._thread: threading.Thread | None = None
        self._started = False
        link.subscribe(DIALER_EVENTS, self._on_event)

    # -- Dialer protocol --------------------------------------------------------------------
    def start(self, on_result: OutcomeSink) -> None:
        self._on_result = on_result
        self._thread = threading.Thread(target=self._run, name=f"ami-dialer-{self.link.name}", daemon=True)
        self._thread.start()
        self._started = True
        self.link.acquire()

    def stop(self) -> None:
        if self._started:
            self.link.unsubscribe(self._on_event)
            self.link.release()
            self._started = False
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def reload(self, settings: AmiDialerSettings, link: AmiLink) -> None:
        """New `[dialer.ami]` values; `link` is the PBX's link they name (maybe another one)."""
        with self._lock:
            self.s = settings
        old = self.link
        if link is old:
            return
        link.subscribe(DIALER_EVENTS, self._on_event)
        if self._started:
            link.acquire()
        with self._lock:
            self.link = link
            left = sorted(self._calls)
            self._calls.clear()
            self._by_chan.clear()
        old.unsubscribe(self._on_event)
        if self._started:
            old.release()
        self.log = get_logger("callbackd.ami.dialer").bind(pbx=link.name)
        self.log.info("ami.dialer_moved", from_pbx=old.name, calls_left_to_reconcile=left)

    def free_slots(self) -> int:
        if not self.link.connected:
            return 0
        with self._lock:
            in_flight = len(self._calls)
            seeking = sum(1 for c in self._calls.values() if not self._agent_engaged(c))
        free = self.s.max_concurrent - in_flight
        if free <= 0 or self.s.queue is None:
            return max(0, free)
        try:
            rows = self.link.list_action("QueueSummary", {"Queue": self.s.queue})
        except AmiError as exc:
            self.log.warning("ami.queue_summary_failed", queue=self.s.queue, error=str(exc))
            return 0
        row = next((r for r in rows if r.get("queue") == self.s.queue), None)
        if row is None:
            self.log.warning("ami.queue_unknown", queue=self.s.queue)
            return 0
        agents = _int(row.get("available")) - _int(row.get("callers")) - seeking
        return max(0, min(free, agents))

    def place(self, request: DialRequest) -> None:
        chan_id = channel_id(request.dial_ref)
        call = _Call(request, chan_id, time.monotonic(), self.s.mode)
        with self._lock:
            self._calls[request.dial_ref] = call
            self._by_chan[chan_id] = request.dial_ref
        number = self._dial_number(request.number)
        keys: dict[str, Any] = {"ActionID": request.dial_ref, "ChannelId": chan_id,
                                "OtherChannelId": f"{chan_id}2", "Async": "true", "Priority": "1",
                                "Timeout": str(self.s.ring_timeout_seconds * 1000)}
        if self.s.mode == "agent-first":
            keys.update(Channel=self.s.agent_channel, Context=self.s.context, Exten=number)
        else:
            keys.update(Channel=self.s.citizen_channel.format(number=number), Context=self.s.context,
                        Exten=self.s.agent_exten)
        if self.s.caller_id:
            keys["CallerID"] = self.s.caller_id
        variables = {"CALLBACK_ID": str(request.callback_id), "CALLBACK_REF": request.dial_ref,
                     "CALLBACK_NUMBER": number, "CALLBACK_ATTEMPT": str(request.attempt),
                     "CALLBACK_KIND": request.kind, "CALLBACK_MODE": self.s.mode,
                     "CALLBACK_RING_TIMEOUT": str(self.s.ring_timeout_seconds), **self.s.variables}
        if self.s.caller_id:
            variables["CALLBACK_CALLERID"] = self.s.caller_id
        try:
            self.link.action("Originate", keys, variables)
        except AmiNoReply as exc:
            # Sent, but no Response (timeout, or the link dropped while waiting): the PBX may be
            # ringing the citizen now. Reporting "failed" would retry the callback and could ring
            # them twice, so the call stays in flight, outcome unknown: its OriginateResponse /
            # DialEnd (ActionID / ChannelId = ours) still ends it; if they never come, status()
            # asks the PBX once the lease runs out.
            with self._lock:
                call.unanswered = True
            self.log.warning("ami.originate_unanswered", dial_ref=request.dial_ref, error=str(exc))
        except AmiError as exc:  # not sent (link down) or refused by the PBX: nothing was dialed
            self._forget(request.dial_ref)
            raise DialError(str(exc)) from exc

    def status(self, dial_ref: str, started_at: datetime) -> DialOutcome | None:
        with self._lock:
            if dial_ref in self._done:
                return self._done[dial_ref]
            call = self._calls.get(dial_ref)
            if call is not None and not call.unanswered:
                return None
        if not self.link.connected:
            raise DialError(f"AMI link to {self.link.name} is down: cannot tell how {dial_ref} ended")
        try:
            chans = self.link.list_action("CoreShowChannels", {})
        except AmiError as exc:
            raise DialError(str(exc)) from exc
        if any(c.get("uniqueid") == channel_id(dial_ref) for c in chans):
            return None
        if call is not None:  # an unanswered Originate whose channel is gone (or never was)
            with self._lock:
                if dial_ref in self._done:
                    return self._done[dial_ref]
                self._forget(dial_ref, locked=True)
        # placed before a restart and gone without our seeing how it ended: the PBX no longer
        # knows either; count it as failed (retried by the policy), never as reached
        self.log.warning("ami.dial_unseen", dial_ref=dial_ref, started_at=started_at.isoformat())
        return DialOutcome.FAILED

    # -- events (reader thread -> inbox) ----------------------------------------------------
    def _on_event(self, name: str, keys: dict[str, str], read_at: float) -> None:
        if name == "originateresponse":
            if keys.get("actionid") in self._calls:
                self._inbox.put((name, keys))
        elif name == "dialend" or name == "hangup":
            if keys.get("uniqueid") in self._by_chan or keys.get("destuniqueid") in self._by_chan:
                self._inbox.put((name, keys))

    def _run(self) -> None:
        while True:
            try:
                item = self._inbox.get(timeout=0.1)
            except queue_mod.Empty:
                item = ("", {})
            if item is None:
                return
            results: list[DialResult] = []
            try:
                with self._lock:
                    if item[0]:
                        self._handle(item[0], item[1], results)
                    self._settle_due(results)
            except Exception as exc:  # noqa: BLE001 - one odd event must not stop the dialer
                self.log.error("ami.dialer_event_failed", error=f"{type(exc).__name__}: {exc}")
            for r in results:
                self._deliver(r)

    def _handle(self, name: str, k: dict[str, str], out: list[DialResult]) -> None:
        if name == "originateresponse":
            call = self._calls.get(k.get("actionid", ""))
            if call is None:
                return
            call.response = k.get("response", "")
            call.reason = _int(k.get("reason"), -1)
            call.detail.update(originate_response=call.response, reason=call.reason)
            self._decide(call, out)
            return
        src, dest = k.get("uniqueid"), k.get("destuniqueid")
        ref = self._by_chan.get(src or "") or self._by_chan.get(dest or "")
        call = self._calls.get(ref or "")
        if call is None:
            return
        if name == "dialend":
            status = (k.get("dialstatus") or "").upper()
            if src == call.chan_id:          # our channel dialled someone: agent-first, the citizen
                if call.mode == "agent-first":
                    call.citizen_status = status
                    call.detail["dial_status"] = status
            elif dest == call.chan_id:       # the originated leg itself
                call.leg_status = status
                call.detail["leg_status"] = status
            self._decide(call, out)
        elif name == "hangup" and src == call.chan_id and call.mode == "agent-first":
            if call.response is not None and call.citizen_status is None:
                call.detail["hangup_cause"] = k.get("cause")
                self._finish(call, DialOutcome.FAILED, out, why="our channel hung up before the citizen's "
                                                                "dial ended")

    def _decide(self, call: _Call, out: list[DialResult]) -> None:
        if call.mode == "agent-first":
            if call.citizen_status is not None:
                self._finish(call, DIAL_STATUS.get(call.citizen_status, DialOutcome.FAILED), out)
            elif call.response is not None and call.response.lower() != "success":
                call.detail["leg"] = "agent"
                self._finish(call, DialOutcome.FAILED, out, why="the agent did not answer; the citizen was "
                                                                "not called")
            return
        if call.response is None:
            return
        if call.reason in REASONS:
            self._finish(call, REASONS[call.reason], out)
        elif call.leg_status is not None:
            self._finish(call, DIAL_STATUS.get(call.leg_status, DialOutcome.FAILED), out)
        elif call.settle_at is None:
            call.settle_at = time.monotonic() + self.s.settle_seconds  # a DialEnd may still explain it
            if self.s.settle_seconds == 0:
                self._finish(call, DialOutcome.FAILED, out)

    def _settle_due(self, out: list[DialResult]) -> None:
        now = time.monotonic()
        for call in [c for c in self._calls.values() if c.settle_at is not None and c.settle_at <= now]:
            self._finish(call, DialOutcome.FAILED, out)

    def _finish(self, call: _Call, outcome: DialOutcome, out: list[DialResult], why: str | None = None) -> None:
        ref = call.req.dial_ref
        if why:
            call.detail["why"] = why
        call.detail.update(mode=call.mode, channel_id=call.chan_id)
        self._forget(ref, locked=True)
        self._done[ref] = outcome
        while len(self._done) > 10_000:
            self._done.popitem(last=False)
        out.append(DialResult(ref, outcome, dict(call.detail)))

    def _forget(self, ref: str, locked: bool = False) -> None:
        if not locked:
            with self._lock:
                self._forget(ref, locked=True)
            return
        call = self._calls.pop(ref, None)
        if call is not None:
            self._by_chan.pop(call.chan_id, None)

    def _deliver(self, result: DialResult) -> None:
        self.log.info("ami.dial_ended", dial_ref=result.dial_ref, outcome=result.outcome.value)
        if self._on_result is None:
            return
        try:
            self._on_result(result)
        except Exception as exc:  # noqa: BLE001 - the outcome stays known to status()
            self.log.error("ami.result_failed", dial_ref=result.dial_ref, error=f"{type(exc).__name__}: {exc}")

    # -- helpers ----------------------------------------------------------------------------
    def _agent_engaged(self, call: _Call) -> bool:
        """Has this call already taken its agent (so QueueSummary counts it as busy)?"""
        if call.mode == "agent-first":
            return call.response is not None or call.leg_status is not None
        return call.leg_status == "ANSWER" or call.reason == 4

    def _dial_number(self, e164: str) -> str:
        if self.s.number_format == "e164":
            return e164
        if self.s.number_format == "digits":
            return e164.lstrip("+")
        try:
            return phonenumbers.national_significant_number(phonenumbers.parse(e164, self.region))
        except phonenumbers.NumberParseException:
            return e164.lstrip("+")


def _int(value: str | None, default: int = 0) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        return default


def build(daemon: Daemon) -> AmiDialer:
    """DIALERS["ami"]: validates [dialer.ami] now, so a bad value fails the start with a ConfigError."""
    s = daemon.settings
    ami = dialer_settings(s)
    links = links_of(daemon)
    dialer = AmiDialer(links.link(ami.pbx), ami, region=s.detect.default_region)
    links.dialer = dialer  # the AMI component applies a reload's [dialer.ami] to it
    return dialer


DIALERS["ami"] = build
