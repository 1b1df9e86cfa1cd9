"""Callbacks: the queue's records, their states and the rules for moving between them."""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any


class State(enum.StrEnum):
    PENDING = "pending"
    SCHEDULED = "scheduled"
    DIALING = "dialing"
    RETRY_WAIT = "retry_wait"
    REACHED = "reached"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    UNREACHABLE = "unreachable"
    SMS_SENT = "sms_sent"
    SMS_DELIVERED = "sms_delivered"
    SMS_FAILED = "sms_failed"
    EVALUATED = "evaluated"

    @property
    def is_open(self) -> bool:
        return self in OPEN_STATES


OPEN_STATES = frozenset({State.PENDING, State.SCHEDULED, State.DIALING, State.RETRY_WAIT})
#: states a worker or operator may claim from (when due)
CLAIMABLE_STATES = (State.PENDING, State.SCHEDULED, State.RETRY_WAIT)


class CloseOutcome(enum.StrEnum):
    """What an operator reports after calling."""

    REACHED = "reached"
    NO_ANSWER = "no-answer"
    BUSY = "busy"
    WRONG_NUMBER = "wrong-number"
    DECLINED = "declined"

    @property
    def retryable(self) -> bool:
        return self in (CloseOutcome.NO_ANSWER, CloseOutcome.BUSY)


@dataclass(frozen=True, slots=True)
class Callback:
    id: int
    kind: str
    number: str
    state: State
    priority: int
    failures: int
    episode_start: datetime
    triggered_at: datetime
    last_failed_at: datetime
    due_at: datetime
    dial_attempts: int
    claimed_by: str | None
    lease_until: datetime | None
    outcome: str | None
    close_reason: str | None
    closed_at: datetime | None
    created_at: datetime
    updated_at: datetime
    sla_due_at: datetime | None = None
    sla_breached_at: datetime | None = None
    window_start: datetime | None = None
    window_end: datetime | None = None
    earliest_at: datetime | None = None
    dialer: str | None = None
    dial_ref: str | None = None
    dial_started_at: datetime | None = None
    last_dial_at: datetime | None = None
    outcome_counts: dict[str, int] | None = None
    request_id: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> Callback:
        # zip over the row's own fields: a page of the API's list builds 50 of these per request
        values = {f: v for f, v in zip(row._fields, row, strict=True) if f in _CALLBACK_FIELD_SET}
        values["state"] = State(values["state"])
        if values.get("outcome_counts"):
            values["outcome_counts"] = json.loads(values["outcome_counts"])
        return cls(**values)

    def as_json(self, *, show_number: bool = True) -> dict[str, Any]:
        from .numbers import mask

        out: dict[str, Any] = {f: getattr(self, f) for f in _CALLBACK_FIELDS}
        for f in _CALLBACK_TIMES:
            v = out[f]
            if v is not None:
                out[f] = v.isoformat().replace("+00:00", "Z")
        out["state"] = self.state.value
        if not show_number:
            out["number"] = mask(self.number)
        return out


#: Callback's fields in order, and those holding times (as_json writes them as ISO 8601 with a Z)
_CALLBACK_FIELDS = tuple(f.name for f in dataclasses.fields(Callback))
_CALLBACK_FIELD_SET = frozenset(_CALLBACK_FIELDS)
_CALLBACK_TIMES = tuple(f.name for f in dataclasses.fields(Callback) if "datetime" in str(f.type))


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    callback_id: int
    at: datetime
    actor: str
    event: str
    from_state: str | None
    to_state: str | None
    detail: dict[str, Any]

    @classmethod
    def from_row(cls, row: Any) -> Event:
        m = row._mapping
        return cls(
            id=m["id"], callback_id=m["callback_id"], at=m["at"], actor=m["actor"], event=m["event"],
            from_state=m["from_state"], to_state=m["to_state"],
            detail=json.loads(m["detail"]) if m["detail"] else {},
        )
