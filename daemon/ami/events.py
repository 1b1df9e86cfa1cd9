"""AMI events -> attempts, the same ones the queue_log source produces for the same calls.

Identity: (system = the PBX name, call_id = the queue leg's Uniqueid, any `systemname-` prefix
kept), so the AMI source and the queue_log tail of one PBX upsert the same row; origin AMI has
the queue_log's rank. Keys are matched case-insensitively (the caller lower-cases them).

What the real Asterisk 22 captures teach (shared/asterisk/CAPTURES.md):
- `QueueCallerAbandon` fires for timeouts as well as hang-ups. The visit is decided by what the
  queue leg did: a `HangupRequest` on the leg *before* the abandon means the caller hung up
  ("abandon"); `VarSet QUEUESTATUS=TIMEOUT` after it means the queue's limit ("timeout"); a leg
  that hangs up without any QUEUESTATUS did not survive the queue ("abandon", step 03's
  TIMEOUT(absolute)). Without the VarSet feed (`queuestatus_seen=False`) the fallback is the
  brief's rule: no HangupRequest before the abandon = "timeout".
- `QueueCallerLeave` also ends answered visits and comes *before* `AgentConnect`: a Leave alone
  decides nothing; AgentConnect is "connect", wait = its HoldTime.
- Newchannel may carry no caller number: the number is taken from QueueCallerJoin (or Join,
  Abandon, Leave, AgentConnect, Hangup, whichever first has a real one). Newchannel and Cdr are
  not needed at all (a Cdr may come before the abandon; it is ignored).
- No timestamps unless `timestampevents=yes`: an event's time is its `Timestamp` header when
  present, else the moment it was read.
"""

from __future__ import annotations

from dataclasses import dataclass

from callback_queue.attempts import Attempt, Origin, Outcome
from callback_queue.numbers import Normalizer

#: event names (lower case) the reducer reads; everything else is dropped before it
RELEVANT = frozenset({
    "queuecallerjoin", "join", "queuecallerabandon", "queuecallerleave", "leave", "agentconnect",
    "hanguprequest", "hangup", "varset",
})
#: what the source asks Asterisk for (AMI Filter regexes, whitelist) and the event mask
FILTER_EVENTS = ("QueueCallerJoin", "QueueCallerAbandon", "QueueCallerLeave", "AgentConnect", "Join", "Leave",
                 "HangupRequest", "Hangup", "OriginateResponse", "DialEnd")
EVENT_MASK = "call,agent,dialplan"  # VarSet is a dialplan-class event; the filter keeps only QUEUESTATUS

#: QUEUESTATUS values (app_queue) -> the queue_log reason of the same exit
_STATUS_REASON = {"TIMEOUT": "timeout", "LEAVEEMPTY": "exitempty", "LEAVEUNAVAIL": "exitempty",
                  "WITHDRAW": "withdraw", "CONTINUE": "timeout"}
_NO_NUMBER = frozenset({"", "<unknown>", "unknown", "<null>", "null", "anonymous"})
MAX_LEGS = 100_000
#: the latest time an event may carry (9999-12-31 23:59:59 UTC; the queue_log and CDR parsers' limit too)
MAX_TS = 253_402_300_799
#: hold times and waits are stored as 32-bit integers
MAX_SECONDS = 2**31 - 1
#: attempts.call_id's width
MAX_CALL_ID = 128
#: a decided-later abandon is settled with the fallback rule when nothing else came this long
SETTLE_SECONDS = 30.0


def filter_regexes() -> list[str]:
    """Whitelist regexes for the AMI `Filter` action (matched against the whole event text)."""
    names = "|".join(FILTER_EVENTS)
    return [f"Event: ({names})\r", "Variable: QUEUESTATUS\r"]


@dataclass(slots=True)
class _Leg:
    join_ts: int | None = None
    caller: str | None = None
    queue: str | None = None
    hangup_requested: bool = False
    abandon_ts: int | None = None
    abandon_hold: int | None = None
    abandon_seen_at: float = 0.0
    left_ts: int | None = None
    status: str | None = None


class AmiReducer:
    """Feeds AMI events (name and keys lower-cased), returns attempts as visits end. Not thread-safe."""

    def __init__(self, *, system: str, normalizer: Normalizer, queuestatus_seen: bool = True) -> None:
        self.system = system
        self.normalizer = normalizer
        #: True when VarSet QUEUESTATUS reaches us (dialplan class in the mask, or the filter)
        self.queuestatus_seen = queuestatus_seen
        self.legs: dict[str, _Leg] = {}
        self.events = 0
        #: the time of the last event fed (its Timestamp when usable, else when it was read)
        self.last_ts: float | None = None
        self._rejects: list[tuple[bytes, str]] = []

    # -- input ----------------------------------------------------------------------------
    def feed(self, name: str, keys: dict[str, str], ts: float) -> Attempt | None:
        """One event; `ts` is when it was read (its Timestamp header wins when present)."""
        self.events += 1
        stamp = keys.get("timestamp")
        when = _epoch(stamp) if stamp else ts
        self.last_ts = ts if when is None else when
        if name not in RELEVANT:
            return None
        uid = keys.get("uniqueid")
        if not uid:
            if name in ("varset", "hangup", "hanguprequest"):  # e.g. a global variable's VarSet: no channel
                return None
            # every queue event Asterisk sends names its caller's Uniqueid: this one is broken
            return self._reject(name, keys, "no Uniqueid: the event cannot be tied to a call")
        # values no attempt can hold are refused with a reason (the source stores a dead letter);
        # the rest of the call is still read from the events that follow
        if when is None:
            return self._reject(name, keys, f"Timestamp {stamp!r} is not a time in epoch seconds (0-{MAX_TS})")
        hold_raw = keys.get("holdtime")
        if hold_raw is not None and hold_raw.strip() and _int(hold_raw) is None:
            return self._reject(name, keys, f"HoldTime {hold_raw[:40]!r} is not a number of seconds "
                                            f"(0-{MAX_SECONDS})")
        if len(uid) > MAX_CALL_ID:
            return self._reject(name, keys, f"Uniqueid of {len(uid)} characters (at most {MAX_CALL_ID})")
        read_at = ts
        ts = when
        t = int(ts)
        legs = self.legs
        leg = legs.get(uid)
        if name == "queuecallerjoin" or name == "join":
            if leg is None or leg.abandon_ts is not None:
                if leg is not None:  # an earlier visit still undecided: settle it first
                    done = self._settle(uid, leg, now_reason=None)
                    legs[uid] = self._join(keys, t)
                    return done
                if len(legs) >= MAX_LEGS:
                    legs.pop(next(iter(legs)))
                legs[uid] = self._join(keys, t)
            else:  # another queue (overflow): keep the first entry time, as the queue_log source does
                leg.queue = keys.get("queue") or leg.queue
                self._caller(leg, keys)
            return None
        if leg is None:
            if name == "queuecallerabandon" or name == "agentconnect":
                # the visit began before we connected: start = end - hold time
                leg = legs[uid] = _Leg()
            else:
                return None
        if name == "hanguprequest":
            if leg.abandon_ts is None:
                leg.hangup_requested = True
            return None
        if name == "queuecallerabandon":
            self._caller(leg, keys)
            leg.queue = leg.queue or keys.get("queue")
            leg.abandon_ts = t
            leg.abandon_hold = _int(keys.get("holdtime"))
            leg.abandon_seen_at = read_at
            if leg.hangup_requested:
                return self._settle(uid, leg, now_reason="abandon")
            if leg.status is not None:
                return self._settle(uid, leg, now_reason=_STATUS_REASON.get(leg.status, "timeout"))
            return None
        if name == "varset":
            if (keys.get("variable") or "").upper() != "QUEUESTATUS":
                return None
            leg.status = (keys.get("value") or "").upper()
            if leg.abandon_ts is not None:
                return self._settle(uid, leg, now_reason=_STATUS_REASON.get(leg.status, "timeout"))
            return None
        if name == "queuecallerleave" or name == "leave":
            self._caller(leg, keys)
            leg.left_ts = t
            return None
        if name == "agentconnect":
            self._caller(leg, keys)
            hold = _int(keys.get("holdtime"))
            del legs[uid]
            start = leg.join_ts if leg.join_ts is not None else t - (hold or 0)
            if hold is None:
                hold = max(0, t - start)
            return self._attempt(uid, leg, start, t, Outcome.CONNECTED, "connect", hold,
                                 leg.queue or keys.get("queue"))
        if name == "hangup":
            self._caller(leg, keys)
            if leg.abandon_ts is not None:
                return self._settle(uid, leg, now_reason=None, hung_up=True)
            del legs[uid]
            if leg.left_ts is not None and leg.join_ts is not None:
                # left the queue, never connected, no abandon: a key press (EXITWITHKEY has no
                # QueueCallerAbandon in app_queue)
                return self._attempt(uid, leg, leg.join_ts, leg.left_ts, Outcome.FAILED, "exitwithkey",
                                     max(0, leg.left_ts - leg.join_ts), leg.queue)
            return None
        return None

    def expire(self, now_ts: float) -> list[Attempt]:
        """Settle abandons nothing further explained within SETTLE_SECONDS (fallback rule)."""
        out = []
        for uid, leg in list(self.legs.items()):
            if leg.abandon_ts is not None and now_ts - leg.abandon_seen_at >= SETTLE_SECONDS:
                a = self._settle(uid, leg, now_reason=None)
                if a is not None:
                    out.append(a)
        return out

    def settle_all(self) -> list[Attempt]:
        """Every undecided abandon, decided now (on stop)."""
        return self.expire(float("inf"))

    def take_rejects(self) -> list[tuple[bytes, str]]:
        """Events refused since the last call: (the event as text, why) - dead letters for the source."""
        out, self._rejects = self._rejects, []
        return out

    def _reject(self, name: str, keys: dict[str, str], why: str) -> None:
        text = f"Event: {name}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in keys.items()) + "\r\n"
        self._rejects.append((text.encode("utf-8", "replace"), why))
        return None

    # -- helpers --------------------------------------------------------------------------
    def _join(self, keys: dict[str, str], t: int) -> _Leg:
        leg = _Leg(join_ts=t, queue=keys.get("queue") or None)
        self._caller(leg, keys)
        return leg

    @staticmethod
    def _caller(leg: _Leg, keys: dict[str, str]) -> None:
        if leg.caller is None:
            num = keys.get("calleridnum") or keys.get("callerid")
            if num is not None and num.strip().lower() not in _NO_NUMBER:
                leg.caller = num.strip()

    def _settle(self, uid: str, leg: _Leg, *, now_reason: str | None, hung_up: bool = False) -> Attempt | None:
        self.legs.pop(uid, None)
        if leg.abandon_ts is None:
            return None
        if now_reason is not None:
            reason = now_reason
        elif leg.hangup_requested:
            reason = "abandon"
        elif leg.status is not None:
            reason = _STATUS_REASON.get(leg.status, "timeout")
        elif hung_up and self.queuestatus_seen:
            reason = "abandon"  # the leg died in the queue without QUEUESTATUS (step 03)
        else:
            reason = "timeout"
        hold = leg.abandon_hold
        end = leg.abandon_ts
        start = leg.join_ts if leg.join_ts is not None else end - (hold or 0)
        if hold is None:
            hold = max(0, end - start)
        return self._attempt(uid, leg, start, end, Outcome.FAILED, reason, hold, leg.queue)

    def _attempt(self, uid: str, leg: _Leg, start: int, end: int, outcome: Outcome, reason: str,
                 wait: int | None, queue: str | None) -> Attempt:
        caller = leg.caller
        return Attempt(self.system, uid, caller, self.normalizer.normalize(caller) if caller else None,
                       start, end, outcome, reason, wait, queue or None, Origin.AMI)


def _int(value: str | None) -> int | None:
    """A count of seconds (0 to MAX_SECONDS, ASCII digits), else None."""
    if value is None:
        return None
    v = value.strip()
    if not (v.isascii() and v.isdigit()) or len(v) > 10:
        return None
    n = int(v)
    return n if n <= MAX_SECONDS else None


def _epoch(value: str) -> float | None:
    """A Timestamp header (epoch seconds, e.g. 1795772422.123456) in 0..MAX_TS, else None."""
    try:
        t = float(value)
    except ValueError:
        return None
    return t if 0 <= t <= MAX_TS else None   # NaN fails both comparisons
