"""Twilio Calls as a dialer (callback_queue.dialing.Dialer).

`place` creates the call with TwiML that connects the citizen to the agent's number (or a TwiML URL)
and a status callback carrying our dial ref; the CallSid then replaces the local ref. Outcomes come
from the call-status webhook (daemon/http/twilio_hooks.py -> `handle_status`). After a restart,
`status` asks Twilio: the call by CallSid, or — if the crash came before the CallSid was stored —
the calls to that number since the dial started (a bounded list).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from xml.sax.saxutils import escape, quoteattr

import sqlalchemy as sa

from callback_queue import schema as t
from callback_queue.dialing import DialQueue, DialRequest, DialResult, OutcomeSink
from callback_queue.errors import CallbackdError
from callback_queue.retry import DialOutcome

TERMINAL = {"completed", "busy", "no-answer", "failed", "canceled"}
STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]


class DialError(CallbackdError):
    """The call could not be placed."""


class DialThrottled(DialError):
    """Twilio refused to create the call for now (429/503): it was not placed and the callback is back in
    the queue, with no attempt counted; the dialer takes no new calls until Retry-After has passed."""


#: how long to hold new calls after a 429/503 that names no Retry-After (seconds)
THROTTLE_PAUSE = 5.0


def outcome_for(status: str, answered_by: str | None = None, *, amd: bool = False) -> DialOutcome | None:
    """Twilio's final CallStatus -> our outcome; None while the call is still going."""
    status = (status or "").lower()
    if status not in TERMINAL:
        return None
    if status == "completed":
        # "completed" also means a voicemail or IVR picked up: with AMD, AnsweredBy tells
        if amd and answered_by and (answered_by.startswith("machine") or answered_by == "fax"):
            return DialOutcome.NO_ANSWER
        return DialOutcome.REACHED
    return {"busy": DialOutcome.BUSY, "no-answer": DialOutcome.NO_ANSWER, "failed": DialOutcome.FAILED,
            "canceled": DialOutcome.FAILED}[status]


def connect_twiml(agent_number: str, *, caller_id: str | None = None, timeout: int = 30) -> str:
    attrs = f' timeout="{int(timeout)}"' + (f" callerId={quoteattr(caller_id)}" if caller_id else "")
    return f"<Response><Dial{attrs}><Number>{escape(agent_number)}</Number></Dial></Response>"


class TwilioDialer:
    kind = "twilio"

    def __init__(self, client: Any, dial_queue: DialQueue, *, from_number: str, status_url: str,
                 agent_number: str | None = None, twiml_url: str | None = None, machine_detection: bool = False,
                 ring_timeout: int = 30, max_concurrent: int = 2) -> None:
        if not agent_number and not twiml_url:
            raise ValueError("the Twilio dialer needs [twilio] agent_number or twiml_url")
        self.client = client
        self.dial_queue = dial_queue
        self.from_number = from_number
        self.status_url = status_url
        self.agent_number = agent_number
        self.twiml_url = twiml_url
        self.amd = machine_detection
        self.ring_timeout = ring_timeout
        self.max_concurrent = max_concurrent
        self._sink: OutcomeSink | None = None
        self._active: set[str] = set()
        self._lock = threading.Lock()
        self._paused_until = 0.0  # monotonic: no new calls before this (Twilio said 429/503)

    # -- Dialer protocol ------------------------------------------------------------------
    def start(self, on_result: OutcomeSink) -> None:
        self._sink = on_result

    def stop(self) -> None:
        self._sink = None

    def free_slots(self) -> int:
        if time.monotonic() < self._paused_until:
            return 0
        with self._lock:
            return max(0, self.max_concurrent - len(self._active))

    def place(self, request: DialRequest) -> None:
        kwargs: dict[str, Any] = {
            "to": request.number, "from_": self.from_number, "timeout": self.ring_timeout,
            "status_callback": f"{self.status_url}?{urlencode({'ref': request.dial_ref})}",
            "status_callback_method": "POST", "status_callback_event": STATUS_EVENTS,
        }
        if self.twiml_url:
            kwargs["url"] = self.twiml_url
        else:
            kwargs["twiml"] = connect_twiml(self.agent_number or "", caller_id=self.from_number)
        if self.amd:
            kwargs["machine_detection"] = "Enable"
        if time.monotonic() < self._paused_until:  # claimed in the same tick as a throttled call
            self._give_back(request, "Twilio is throttling: not sent")
        try:
            call = self.client.calls.create(**kwargs)
        except Exception as exc:  # noqa: BLE001 - translated at the boundary
            status = getattr(exc, "status", None)
            if status in (429, 503):
                from sms.senders.twilio import retry_after

                wait = retry_after(self.client) or THROTTLE_PAUSE
                self._paused_until = max(self._paused_until, time.monotonic() + wait)
                self._give_back(request, f"Twilio {status}/{getattr(exc, 'code', '')}: {getattr(exc, 'msg', exc)}",
                                wait)
            raise DialError(f"Twilio: the call could not be created: {exc}") from exc
        with self._lock:
            self._active.add(call.sid)
        self.dial_queue.set_ref(request.callback_id, request.dial_ref, call.sid)

    def _give_back(self, request: DialRequest, why: str, wait: float | None = None) -> None:
        """Not placed: the claim goes back to the queue (no attempt counted); raises DialThrottled."""
        left = max(0.0, self._paused_until - time.monotonic()) if wait is None else wait
        note = f"{why}; not placed, back in the queue; calls resume in {left:.1f} s"
        self.dial_queue.give_back(request.callback_id, request.dial_ref, f"dialer:{self.kind}", note)
        raise DialThrottled(note)

    def status(self, dial_ref: str, started_at: datetime) -> DialOutcome | None:
        try:
            if dial_ref.startswith("CA"):
                call = self.client.calls(dial_ref).fetch()
                outcome = outcome_for(call.status, getattr(call, "answered_by", None), amd=self.amd)
                if outcome is not None:  # ended without its webhook reaching us: the slot is free again
                    with self._lock:
                        self._active.discard(dial_ref)
                return outcome
            number = self._number_for(dial_ref)
            if number is None:
                return DialOutcome.FAILED
            calls = list(self.client.calls.page(to=number, start_time_after=started_at - timedelta(minutes=1),
                                                page_size=2))
        except Exception as exc:  # noqa: BLE001
            raise DialError(f"Twilio: cannot look up call {dial_ref}: {exc}") from exc
        if not calls:
            return DialOutcome.FAILED          # never reached Twilio: the dial was not placed
        call = calls[0]
        return outcome_for(call.status, getattr(call, "answered_by", None), amd=self.amd)

    # -- webhook ------------------------------------------------------------------------------
    def handle_status(self, form: Mapping[str, str], ref: str | None = None) -> DialResult | None:
        """A call-status callback (already signature-checked). Final statuses become a DialResult."""
        sid = form.get("CallSid", "")
        outcome = outcome_for(form.get("CallStatus", ""), form.get("AnsweredBy"), amd=self.amd)
        if outcome is None:
            return None
        with self._lock:
            self._active.discard(sid)
        detail = {k: form[k] for k in ("CallSid", "CallStatus", "AnsweredBy", "CallDuration", "SipResponseCode")
                  if form.get(k)}
        result = DialResult(dial_ref=sid, outcome=outcome, detail=detail)
        deliver(result, self._sink, self.dial_queue, fallback_ref=ref)
        return result

    def _number_for(self, dial_ref: str) -> str | None:
        cb = t.callbacks
        with self.dial_queue.store.read() as conn:
            return conn.execute(sa.select(cb.c.number).where(cb.c.dial_ref == dial_ref)).scalar()


def deliver(result: DialResult, sink: OutcomeSink | None, dial_queue: DialQueue, *, fallback_ref: str | None) -> None:
    """The CallSid is the ref once stored; a callback that beat that update still names our local ref."""
    cb = t.callbacks
    with dial_queue.store.read() as conn:
        known = conn.execute(sa.select(cb.c.id).where(cb.c.dial_ref == result.dial_ref)).first() is not None
    if not known and fallback_ref:
        result = DialResult(fallback_ref, result.outcome, result.detail)
    if sink is not None:
        sink(result)
    else:
        dial_queue.record(result, "twilio")


def dialer_from(settings: Any, dial_queue: DialQueue, client: Any = None) -> TwilioDialer:
    from sms.service import public_base
    from sms.twilio_http import twilio_client

    tw = settings.twilio
    if not tw.from_number:
        raise ValueError("the Twilio dialer needs [twilio] from_number")
    return TwilioDialer(client or twilio_client(settings), dial_queue, from_number=tw.from_number,
                        status_url=public_base(settings) + "/twilio/call-status", agent_number=tw.agent_number,
                        twiml_url=tw.twiml_url, machine_detection=tw.machine_detection, ring_timeout=tw.ring_timeout,
                        max_concurrent=tw.max_concurrent_calls)


def _build(daemon: Any) -> TwilioDialer:
    """[dialer] kind = "twilio": the dispatcher places calls through Twilio; call webhooks reach it."""
    from callback_queue.errors import ConfigError

    try:
        d = dialer_from(daemon.settings, DialQueue(daemon.queue))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    daemon.services.extra["twilio_dialer"] = d
    return d


def _register() -> None:
    from daemon.dispatch import DIALERS

    DIALERS["twilio"] = _build


_register()
