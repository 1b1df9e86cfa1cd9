"""Follow-ups: the satisfaction call for a closed request, a `callbacks` row of kind 'followup'.

They share planning, dialing and the SMS fallback with recalls. A number that already has an open
callback, or is on the do-not-contact list, gets no second one.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from callback_queue import schema as t
from callback_queue.callbacks import OPEN_STATES, Callback, State
from callback_queue.clock import Clock
from callback_queue.errors import CallbackdError
from callback_queue.ingest import _ev
from callback_queue.store import Store

from .contacts import is_listed

_OPEN = tuple(s.value for s in OPEN_STATES)


class FollowupRefused(CallbackdError):
    """The follow-up was not created."""


@dataclass
class ImportReport:
    created: list[int] = field(default_factory=list)
    duplicates: int = 0
    refused: list[tuple[int, str]] = field(default_factory=list)    # (line, why)


class Followups:
    def __init__(self, store: Store, clock: Clock, normalize: object = None) -> None:
        self.store = store
        self.clock = clock
        self.normalize = normalize       # callable(raw) -> E.164 or None

    def _e164(self, raw: str) -> str:
        raw = raw.strip()
        if self.normalize is not None:
            n = self.normalize(raw)  # type: ignore[operator]
            if not n:
                raise FollowupRefused(f"{raw!r} is not a phone number that can be called")
            return str(n)
        if not (raw.startswith("+") and raw[1:].isdigit() and 8 <= len(raw) <= 16):
            raise FollowupRefused(f"{raw!r} is not an E.164 number")
        return raw

    def add(self, number: str, request_id: str, *, due_at: datetime | None = None, priority: int = 0,
            actor: str = "followups") -> Callback:
        request_id = request_id.strip()
        if not request_id or len(request_id) > 64:
            raise FollowupRefused("a request id (1 to 64 characters) is needed")
        e164 = self._e164(number)
        now = self.clock.now()
        cb = t.callbacks
        try:
            with self.store.write() as conn:
                if is_listed(conn, e164):
                    raise FollowupRefused(f"{e164} is on the do-not-contact list")
                dup = conn.execute(sa.select(cb.c.id).where(cb.c.kind == "followup",
                                                            cb.c.request_id == request_id)).first()
                if dup is not None:
                    raise FollowupRefused(f"request {request_id} already has follow-up {dup.id}")
                other = conn.execute(sa.select(cb.c.id, cb.c.kind).where(cb.c.number == e164,
                                                                         cb.c.state.in_(_OPEN))).first()
                if other is not None:
                    raise FollowupRefused(f"{e164} already has open {other.kind} callback {other.id}")
                row = conn.execute(cb.insert().values(
                    kind="followup", number=e164, state=State.PENDING.value, priority=priority, failures=0,
                    episode_start=now, triggered_at=now, last_failed_at=now, due_at=due_at or now,
                    dial_attempts=0, created_at=now, updated_at=now, request_id=request_id,
                ).returning(*cb.c)).first()
                assert row is not None
                conn.execute(t.callback_events.insert(), [_ev(row.id, now, actor, "opened", None, State.PENDING,
                                                              {"kind": "followup", "request_id": request_id})])
                return Callback.from_row(row)
        except IntegrityError as exc:
            raise FollowupRefused(f"{e164} already has an open callback") from exc

    def import_csv(self, path: Path, *, actor: str = "followups-import") -> ImportReport:
        """CSV with a header: number, request_id[, due_at (ISO 8601), priority]. Safe to repeat."""
        report = ImportReport()
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            fields = {(h or "").strip().lower() for h in reader.fieldnames or []}
            if not {"number", "request_id"} <= fields:
                raise FollowupRefused(f"{path}: the header must name the columns number and request_id")
            for line, raw in enumerate(reader, start=2):
                row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items()}
                try:
                    due = datetime.fromisoformat(row["due_at"]) if row.get("due_at") else None
                    if due is not None and due.tzinfo is None:
                        raise FollowupRefused("due_at needs a time zone offset (e.g. +08:00)")
                    prio = int(row["priority"]) if row.get("priority") else 0
                    c = self.add(row.get("number", ""), row.get("request_id", ""), due_at=due, priority=prio,
                                 actor=actor)
                except FollowupRefused as exc:
                    if "already has follow-up" in str(exc):
                        report.duplicates += 1
                    else:
                        report.refused.append((line, str(exc)))
                except ValueError as exc:
                    report.refused.append((line, f"bad value: {exc}"))
                else:
                    report.created.append(c.id)
        return report
