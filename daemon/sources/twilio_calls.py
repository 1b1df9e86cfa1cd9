"""Twilio inbound calls → attempts: status webhooks, Enqueue/Dial action webhooks, a catch-up poll.

Citizens who call the hotline's Twilio number(s) feed the same detection as Asterisk callers.
Every record of one call shares the attempt identity (system ``twilio:<AccountSid>``, call id =
CallSid), so the status webhook, the action webhooks, the poll and any repeat upsert one row.

What a record says about the caller (FORMATS.md d; the Asterisk analogue in brackets):

* **Enqueue action** (``QueueResult``, ``QueueTime`` seconds waited) — exact, rank 2 [queue_log]:
  ``bridged`` (and ``bridging-in-process``, ``redirected-from-bridged``) → connected;
  ``hangup`` → failed ``abandon``; ``leave`` → ``exitwithkey``; ``queue-full`` → ``refused``;
  ``redirected``, ``error``, ``system-error`` → ``failed``. ``wait_seconds`` = ``QueueTime``.
* **Dial action** (``DialCallStatus``) — exact, rank 2: ``completed``/``answered`` → connected;
  ``busy``, ``no-answer``, ``failed``, ``canceled`` → failed with that reason.
* **Final call status only** (the status webhook, the poll): ``busy``, ``no-answer``, ``failed``,
  ``canceled`` → failed with that reason, rank 2 (the call never reached the TwiML app, or the
  app rejected it). ``completed`` only says that the TwiML app answered — an IVR and ``<Enqueue>``
  answer every call — so, like a CDR ANSWERED record, it is stored with **rank 1** (origin
  ``cdr``: a call-detail record that cannot see inside the queue), which any queue/dial result of
  the same call overrides whatever order they arrive in:
  with ``completed_means_answered`` → connected; else connected when ``CallDuration`` >=
  ``answered_min_seconds`` (greeting + wait + a conversation), otherwise failed ``abandon`` with
  the duration as ``wait_seconds`` (so a call shorter than ``[detect] min_wait_seconds`` is a
  misdial, as for Asterisk). A completed call without a duration counts as lasting 0 s.
  Configure the Enqueue/Dial ``action`` URLs for exact results; the rule is only the fallback.
* Non-terminal statuses (``queued``, ``initiated``, ``ringing``, ``in-progress``), calls that are
  not ``inbound`` and calls to numbers outside ``[twilio_source] numbers`` are ignored; anything
  unreadable (no CallSid, unknown status, a non-numeric duration, a bad timestamp) is a dead letter.

Times: the status webhook's ``Timestamp`` (RFC 2822) is when the call ended, ``CallDuration`` gives
its start; the poll's ``start_time`` plus ``duration`` (``end_time`` when there is no duration); an
action webhook happens when the caller leaves the queue or the dial ends, so it ends "now" and
started ``QueueTime`` (or ``DialCallDuration``) earlier. A failed attempt's ``wait_seconds`` is its
end minus its start (for a queue result: ``QueueTime``) — the figure the store's merge of two
failed pieces of one call computes, so a repeated record changes nothing.
"""

from __future__ import annotations

import email.utils
import json
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from callback_queue.attempts import Attempt, DeadLetter, Origin, Outcome
from callback_queue.clock import Clock
from callback_queue.ingest import CursorWrite, Ingestor, IngestResult, load_cursor
from callback_queue.numbers import Normalizer, mask
from callback_queue.store import Store

from ..app import Daemon, detect_rules, normalizer, register_component
from ..logs import get_logger
from .twilio_settings import TwilioSourceSettings

TERMINAL = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})
NON_TERMINAL = frozenset({"queued", "initiated", "ringing", "in-progress"})
_FAILED_STATUS = {"busy": "busy", "no-answer": "no-answer", "failed": "failed", "canceled": "canceled"}
#: QueueResult -> (outcome, reason)
QUEUE_RESULTS: dict[str, tuple[Outcome, str]] = {
    "bridged": (Outcome.CONNECTED, "connect"),
    "bridging-in-process": (Outcome.CONNECTED, "connect"),
    "redirected-from-bridged": (Outcome.CONNECTED, "connect"),
    "hangup": (Outcome.FAILED, "abandon"),
    "leave": (Outcome.FAILED, "exitwithkey"),
    "queue-full": (Outcome.FAILED, "refused"),
    "redirected": (Outcome.FAILED, "failed"),
    "error": (Outcome.FAILED, "failed"),
    "system-error": (Outcome.FAILED, "failed"),
}
#: DialCallStatus -> (outcome, reason)
DIAL_RESULTS: dict[str, tuple[Outcome, str]] = {
    "completed": (Outcome.CONNECTED, "connect"),
    "answered": (Outcome.CONNECTED, "connect"),
    **{k: (Outcome.FAILED, v) for k, v in _FAILED_STATUS.items()},
}
_ACCOUNT = re.compile(r"^AC[0-9a-fA-F]{32}$")
_CALL = re.compile(r"^CA[0-9a-fA-F]{32}$")
#: the poll re-reads this much before its cursor (calls that appear in the list a little late)
POLL_OVERLAP = timedelta(minutes=5)

Result = Attempt | DeadLetter | None


class _Bad(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Rules:
    """How a completed call without a queue/dial result is read (see the module's docstring)."""

    completed_means_answered: bool = False
    answered_min_seconds: int = 60
    numbers: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, s: TwilioSourceSettings) -> Rules:
        return cls(s.completed_means_answered, s.answered_min_seconds, frozenset(s.numbers))


class TwilioCallReducer:
    """Twilio's call data (webhook forms, call-list records) → `Attempt`, `DeadLetter` or None (ignored).

    Never raises on bad input. `account_sid` is the configured account, used when a record has none.
    """

    def __init__(self, rules: Rules, norm: Normalizer, *, account_sid: str | None = None) -> None:
        self.rules = rules
        self.norm = norm
        self.account_sid = account_sid

    # -- webhooks -------------------------------------------------------------------------------
    def status(self, form: Mapping[str, str], now: datetime, *, position: str = "webhook:status") -> Result:
        """A call status callback of an inbound call (only the final one matters)."""
        return self._guard(form, position, lambda: self._status(form, now))

    def queue(self, form: Mapping[str, str], now: datetime, *, position: str = "webhook:queue") -> Result:
        """The request of `<Enqueue action="...">`: the caller left the queue."""
        return self._guard(form, position, lambda: self._queue(form, now))

    def dial(self, form: Mapping[str, str], now: datetime, *, position: str = "webhook:dial") -> Result:
        """The request of `<Dial action="...">`: the dialled leg ended."""
        return self._guard(form, position, lambda: self._dial(form, now))

    # -- the call list ----------------------------------------------------------------------------
    def call(self, record: Mapping[str, Any], *, position: str = "poll") -> Result:
        """A Call resource from the call list (keys as in the API: sid, from, to, status, start_time...)."""
        try:
            if (record.get("direction") or "inbound") != "inbound":  # (the list was asked for To=hotline)
                return None
            status = str(record.get("status") or "").lower()
            if status in NON_TERMINAL:
                return None
            sid = _sid(record.get("sid"))
            account = self._account(record.get("account_sid"))
            caller = _caller(record.get("from"))
            duration = _seconds(record.get("duration"), "duration")
            start, end = _when(record.get("start_time"), "start_time"), _when(record.get("end_time"), "end_time")
            if start is None:
                if end is None:
                    raise _Bad("a call without start_time or end_time")
                start = end - (duration or 0)
            elif duration is not None:
                end = start + duration
            return self._final(account, sid, caller, status, start, end, duration)
        except _Bad as exc:
            raw = json.dumps({k: _plain(v) for k, v in record.items()}, sort_keys=True, ensure_ascii=False)
            sid = str(record.get("sid") or "?")
            return DeadLetter(self._source(record.get("account_sid")), f"{position}:{sid}", raw.encode(), str(exc))

    # -- internals --------------------------------------------------------------------------------
    def _guard(self, form: Mapping[str, str], position: str, fn: Callable[[], Result]) -> Result:
        try:
            if (form.get("Direction") or "inbound") != "inbound" or not self._to_hotline(form.get("To")):
                return None
            return fn()
        except _Bad as exc:
            raw = urlencode(sorted(form.items())).encode()
            sid = form.get("CallSid") or "?"
            return DeadLetter(self._source(form.get("AccountSid")), f"{position}:{sid}", raw, str(exc))

    def _status(self, form: Mapping[str, str], now: datetime) -> Result:
        status = (form.get("CallStatus") or "").lower()
        if status in NON_TERMINAL:
            return None
        sid, account, caller = self._who(form)
        duration = _seconds(form.get("CallDuration"), "CallDuration")
        end = _when(form.get("Timestamp"), "Timestamp") or int(now.timestamp())
        return self._final(account, sid, caller, status, end - (duration or 0), end, duration)

    def _queue(self, form: Mapping[str, str], now: datetime) -> Result:
        result = (form.get("QueueResult") or "").lower()
        if result not in QUEUE_RESULTS:
            raise _Bad(f"QueueResult {form.get('QueueResult')!r} is none of {', '.join(QUEUE_RESULTS)}")
        sid, account, caller = self._who(form)
        waited = _seconds(form.get("QueueTime"), "QueueTime")
        outcome, reason = QUEUE_RESULTS[result]
        end = int(now.timestamp())
        return self._attempt(account, sid, caller, end - (waited or 0), end, outcome, reason,
                             None if outcome is Outcome.CONNECTED else waited, form.get("QueueSid") or None,
                             Origin.TWILIO)

    def _dial(self, form: Mapping[str, str], now: datetime) -> Result:
        status = (form.get("DialCallStatus") or "").lower()
        if status not in DIAL_RESULTS:
            raise _Bad(f"DialCallStatus {form.get('DialCallStatus')!r} is none of {', '.join(DIAL_RESULTS)}")
        sid, account, caller = self._who(form)
        talked = _seconds(form.get("DialCallDuration"), "DialCallDuration")
        outcome, reason = DIAL_RESULTS[status]
        end = int(now.timestamp())
        return self._attempt(account, sid, caller, end - (talked or 0), end, outcome, reason, None, None,
                             Origin.TWILIO)

    def _who(self, form: Mapping[str, str]) -> tuple[str, str, str]:
        return _sid(form.get("CallSid")), self._account(form.get("AccountSid")), _caller(form.get("From"))

    def _final(self, account: str, sid: str, caller: str, status: str, start: int, end: int | None,
               duration: int | None) -> Attempt:
        """What the final call status alone says (webhook without queue info, or the poll)."""
        if status in _FAILED_STATUS:
            return self._attempt(account, sid, caller, start, end, Outcome.FAILED, _FAILED_STATUS[status],
                                 None, None, Origin.TWILIO)
        if status != "completed":
            raise _Bad(f"call status {status!r} is none of {', '.join(sorted(TERMINAL | NON_TERMINAL))}")
        # the TwiML app answered: rank 1, like a CDR ANSWERED record; a queue/dial result overrides it
        r = self.rules
        if r.completed_means_answered or (duration is not None and duration >= r.answered_min_seconds):
            return self._attempt(account, sid, caller, start, end, Outcome.CONNECTED, "connect", None, None,
                                 Origin.CDR)
        return self._attempt(account, sid, caller, start, end, Outcome.FAILED, "abandon", duration, None, Origin.CDR)

    def _attempt(self, account: str, sid: str, caller: str, start: int, end: int | None, outcome: Outcome,
                 reason: str, wait: int | None, queue: str | None, origin: Origin) -> Attempt:
        if outcome is Outcome.FAILED and end is not None:
            # what the store's merge of two failed pieces of one call computes: a repeat changes nothing
            wait = end - start
        return Attempt(system=f"twilio:{account}", call_id=sid, caller=caller, number=self.norm.normalize(caller),
                       started_ts=start, ended_ts=end, outcome=outcome, reason=reason, wait_seconds=wait,
                       queue=queue, origin=origin)

    def _to_hotline(self, to: Any) -> bool:
        return not self.rules.numbers or not to or str(to) in self.rules.numbers

    def _account(self, value: Any) -> str:
        account = str(value or self.account_sid or "")
        if not _ACCOUNT.match(account):
            raise _Bad(f"AccountSid {value!r} is not an account SID (AC + 32 hex digits)")
        return account

    def _source(self, account: Any) -> str:
        a = str(account or self.account_sid or "")
        return f"twilio:{a}" if _ACCOUNT.match(a) else "twilio"


def _sid(value: Any) -> str:
    if not isinstance(value, str) or not _CALL.match(value):
        raise _Bad(f"CallSid {value!r} is not a call SID (CA + 32 hex digits)")
    return value


def _caller(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Bad("no From (the caller)")
    return value.strip()


def _seconds(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        n = int(str(value).strip())
    except ValueError:
        raise _Bad(f"{name} {value!r} is not a number of seconds") from None
    if n < 0 or n > 7 * 86400:
        raise _Bad(f"{name} {value!r} is out of range")
    return n


def _when(value: Any, name: str) -> int | None:
    """An RFC 2822 string (webhooks, raw API) or a datetime (twilio-python) → epoch seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        dt = value
    else:
        try:
            dt = email.utils.parsedate_to_datetime(str(value))
        except (TypeError, ValueError, IndexError):
            raise _Bad(f"{name} {value!r} is not an RFC 2822 date") from None
    if dt.tzinfo is None:
        raise _Bad(f"{name} {value!r} has no time zone")
    return int(dt.timestamp())


def _plain(v: Any) -> Any:
    return v.astimezone(UTC).isoformat() if isinstance(v, datetime) else v


def call_record(call: Any) -> dict[str, Any]:
    """A twilio-python CallInstance as the API's field names (what `TwilioCallReducer.call` reads)."""
    return {"sid": call.sid, "account_sid": call.account_sid, "from": getattr(call, "_from", None), "to": call.to,
            "status": call.status, "direction": call.direction, "start_time": call.start_time,
            "end_time": call.end_time, "duration": call.duration}


# -- the catch-up poll -------------------------------------------------------------------------------
@dataclass(slots=True)
class PollResult:
    listed: int = 0
    attempts: int = 0
    dead_letters: int = 0
    pending: int = 0
    truncated: list[str] = field(default_factory=list)
    ingest: IngestResult | None = None


class TwilioCallPoller:
    """Lists the calls to each hotline number since the cursor and ingests the finished inbound ones.

    The cursor (`source_cursors`, name ``twilio:<AccountSid>``, committed with the attempts) is the
    start time from which the next poll reads: "now", or the start of the oldest call that was still
    going (it is read again until it ends). Each poll re-reads `POLL_OVERLAP` before it; the upsert
    makes re-reads change nothing.
    """

    def __init__(self, settings: TwilioSourceSettings, client: Any, account_sid: str, ingestor: Ingestor,
                 reducer: TwilioCallReducer, clock: Clock, *, log: Any = None) -> None:
        self.settings = settings
        self.client = client
        self.account_sid = account_sid
        self.name = f"twilio:{account_sid}"
        self.ingestor = ingestor
        self.reducer = reducer
        self.clock = clock
        self.log = log or get_logger("callbackd.twilio_source")
        self._lock = threading.Lock()

    @property
    def store(self) -> Store:
        return self.ingestor.store

    def poll(self) -> PollResult:
        with self._lock:
            return self._poll()

    def _poll(self) -> PollResult:
        s = self.settings
        now = self.clock.now()
        now_ts = int(now.timestamp())
        cur = load_cursor(self.store, self.name)
        since = int(cur.state["since"]) if cur and cur.state and "since" in cur.state else \
            now_ts - int(s.lookback.total_seconds())
        read_from = datetime.fromtimestamp(since, UTC) - POLL_OVERLAP
        out = PollResult()
        attempts: list[Attempt] = []
        dead: list[DeadLetter] = []
        next_since = now_ts
        for number in s.numbers:
            calls = self.client.calls.list(to=number, start_time_after=read_from, limit=s.max_calls,
                                           page_size=min(s.max_calls, 1000))
            out.listed += len(calls)
            if len(calls) >= s.max_calls:
                out.truncated.append(number)
                self.log.warning("twilio_source.poll_truncated", number=mask(number), calls=len(calls),
                                 hint="raise [twilio_source] max_calls or shorten poll_interval")
            for call in calls:
                rec = call_record(call)
                status = str(rec.get("status") or "").lower()
                if status in NON_TERMINAL and (rec.get("direction") or "inbound") == "inbound":
                    started = rec.get("start_time")
                    out.pending += 1
                    if isinstance(started, datetime):
                        next_since = min(next_since, int(started.timestamp()))
                    continue
                r = self.reducer.call(rec, position=f"poll:{number}")
                if isinstance(r, Attempt):
                    attempts.append(r)
                elif isinstance(r, DeadLetter):
                    dead.append(r)
        cursor = CursorWrite(self.name, None, None, None, next_since, None, {"since": next_since})
        out.ingest = self.ingestor.ingest(attempts, dead=dead, cursor=cursor)
        out.attempts, out.dead_letters = len(attempts), len(dead)
        if attempts or dead:
            self.log.info("twilio_source.polled", listed=out.listed, attempts=out.attempts,
                          dead_letters=out.dead_letters, opened=len(out.ingest.opened),
                          cancelled=len(out.ingest.cancelled))
        return out


def reducer_for(settings: Any) -> TwilioCallReducer:
    """The reducer from the daemon's settings ([twilio_source], [detect] numbers, [twilio] account)."""
    return TwilioCallReducer(Rules.from_settings(settings.twilio_source), normalizer(settings),
                             account_sid=settings.twilio.account_sid)


def webhook_ingestor(services: Any) -> Ingestor:
    """The daemon's ingestor (new callbacks get planned at once), or one of our own (tests, CLI apps)."""
    ing = services.extra.get("ingestor")
    if ing is None:
        ing = Ingestor(services.store, services.clock, detect_rules(services.settings))
        services.extra["ingestor"] = ing
    return ing


def _reducer(services: Any) -> TwilioCallReducer:
    cached = services.extra.get("twilio_reducer")
    if cached is None or cached[0] is not services.settings:  # rebuilt after a reload
        cached = (services.settings, reducer_for(services.settings))
        services.extra["twilio_reducer"] = cached
    return cached[1]


def ingest_form(services: Any, kind: str, form: Mapping[str, str], path: str) -> Result:
    """One verified webhook's fields → the store (kind: status, queue or dial). Returns what it made."""
    reducer = _reducer(services)
    read = {"status": reducer.status, "queue": reducer.queue, "dial": reducer.dial}[kind]
    r = read(form, services.clock.now(), position=f"webhook:{path}")
    log = get_logger("callbackd.twilio_source")
    if isinstance(r, Attempt):
        res = webhook_ingestor(services).ingest([r])
        log.info("twilio_source.call", kind=kind, call_sid=r.call_id, number=mask(r.number), outcome=r.outcome.value,
                 reason=r.reason, opened=res.opened, cancelled=res.cancelled)
    elif isinstance(r, DeadLetter):
        webhook_ingestor(services).ingest([], dead=[r])
        log.warning("twilio_source.dead_letter", kind=kind, position=r.position, reason=r.reason)
    return r


def inbound_hook(services: Any, kind: str, verify: Any, forbidden: Any) -> Any:
    """A Starlette endpoint for /twilio/inbound/<kind>: signature checked (403), then stored.

    The status callback gets 204. The Enqueue/Dial action requests get `[twilio_source] action_twiml`
    (what the caller gets next) even when storing fails: the caller may still be on the line.
    """
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response

    log = get_logger("callbackd.twilio_source")

    async def endpoint(request: Request) -> Response:
        form = await verify(services, request)
        if form is None:
            return forbidden(request)
        settings = services.settings
        if not settings.twilio_source.enabled:
            log.warning("twilio_source.disabled", path=request.url.path)
            return PlainTextResponse("the Twilio call-log source is not enabled ([twilio_source] enabled)",
                                     status_code=404)
        if kind == "status":
            await run_in_threadpool(ingest_form, services, kind, form, request.url.path)
            return Response(status_code=204)
        try:
            await run_in_threadpool(ingest_form, services, kind, form, request.url.path)
        except Exception as exc:  # noqa: BLE001 - the caller hears the TwiML whatever the store did
            log.error("twilio_source.store_failed", kind=kind, call_sid=form.get("CallSid"),
                      error=f"{type(exc).__name__}: {exc}")
        return Response(settings.twilio_source.action_twiml, media_type="text/xml")

    return endpoint


class TwilioSourceComponent:
    name = "twilio-source"

    def __init__(self, daemon: Daemon, client: Any = None) -> None:
        from sms.twilio_http import twilio_client

        self.daemon = daemon
        s = daemon.settings
        self.poller = TwilioCallPoller(s.twilio_source, client or twilio_client(s), str(s.twilio.account_sid),
                                       daemon.ingestor, reducer_for(s), daemon.clock, log=daemon.log)
        if daemon.services is not None:
            daemon.services.extra["ingestor"] = daemon.ingestor
        if not s.http.public_url:
            daemon.log.warning("twilio_source.no_public_url",
                               hint="set [http] public_url: Twilio signs the webhooks with the public URL")

    def start(self) -> None:
        self.daemon.add_job(f"poll:{self.poller.name}", self.poller.poll,
                            self.daemon.settings.twilio_source.poll_interval.total_seconds(), singleton=True)

    def stop(self) -> None:
        pass

    def reload(self, new: Any) -> None:
        """SIGHUP: the rules and numbers change at once; the interval and enabling need a restart."""
        self.poller.settings = new.twilio_source
        self.poller.reducer = reducer_for(new)


@register_component
def _build(daemon: Daemon) -> Any:
    if not daemon.settings.twilio_source.enabled:
        return None
    return TwilioSourceComponent(daemon)
