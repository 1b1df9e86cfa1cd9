"""Attempts: one inbound call by a citizen, normalized, whatever source saw it."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple


class Outcome(enum.StrEnum):
    CONNECTED = "connected"
    FAILED = "failed"


class Origin(enum.StrEnum):
    """Which kind of source saw the attempt; a higher rank is the better authority."""

    CDR = "cdr"
    QUEUE_LOG = "queue_log"
    AMI = "ami"
    TWILIO = "twilio"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Origin.CDR: 1, Origin.QUEUE_LOG: 2, Origin.AMI: 2, Origin.TWILIO: 2}

#: failure reasons, as stored in attempts.reason
FAILURE_REASONS = (
    "abandon",       # queue_log ABANDON: hung up while waiting
    "timeout",       # EXITWITHTIMEOUT: the queue's wait limit
    "exitempty",     # EXITEMPTY: no reachable members
    "exitwithkey",   # EXITWITHKEY: pressed a key to leave (often asks for a callback)
    "withdraw",      # WITHDRAW: taken out by an application
    "syscompat",     # SYSCOMPAT: channels not compatible
    "no-answer",     # CDR: not answered
    "busy",          # CDR / Twilio
    "congestion",    # CDR / Twilio
    "failed",        # CDR FAILED / Twilio failed
    "refused",       # CDR: sent to a queue it could not join (queue_log has no line)
    "canceled",      # Twilio canceled
)


class Attempt(NamedTuple):
    """One inbound call as a source saw it (a NamedTuple: imports create hundreds of thousands).

    `system` names the PBX or account the call id belongs to; (system, call_id)
    is the attempt's identity, shared by every source that sees the same call
    (queue_log callid = AMI Uniqueid = CDR uniqueid of the caller's leg).
    """

    system: str
    call_id: str
    caller: str | None          # as the source gave it
    number: str | None          # E.164, None when unknown or ignored
    started_ts: int             # epoch seconds, UTC
    ended_ts: int | None
    outcome: Outcome
    reason: str                 # "connect" or one of FAILURE_REASONS
    wait_seconds: int | None
    queue: str | None
    origin: Origin

    @property
    def failed(self) -> bool:
        return self.outcome is Outcome.FAILED


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Input that could not be understood, kept with where it came from and why."""

    source: str
    position: str
    raw: bytes
    reason: str
