"""Storing attempts and acting on what detection says, one transaction per batch.

A batch's attempts, its dead letters and the source position that produced
them commit together (DESIGN invariant 7), so a crash at any point leaves
either all of a batch or none of it, and a re-read changes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import schema as t
from .attempts import Attempt, DeadLetter, Origin, Outcome
from .callbacks import OPEN_STATES, State
from .clock import Clock, utc_from_ts
from .detection import AttemptView, Cancel, DetectRules, Grow, Open, OpenEpisode, detect
from .numbers import mask
from .store import Store

_OPEN = tuple(s.value for s in OPEN_STATES)

# Same merge rules as `merge_attempts` below; a higher rank (queue_log, AMI) is the
# authority over CDR; at equal rank a call is connected if any visit connected.
_UPSERT = """
INSERT INTO attempts (system, call_id, caller, number, started_ts, ended_ts, outcome, reason,
                      wait_seconds, queue, origin, rank)
{source}
ON CONFLICT (system, call_id) DO UPDATE SET
  number = CASE WHEN excluded.rank > attempts.rank THEN COALESCE(excluded.number, attempts.number)
                ELSE COALESCE(attempts.number, excluded.number) END,
  caller = CASE WHEN excluded.rank > attempts.rank THEN COALESCE(excluded.caller, attempts.caller)
                ELSE COALESCE(attempts.caller, excluded.caller) END,
  started_ts = CASE WHEN excluded.rank > attempts.rank THEN excluded.started_ts
                    WHEN excluded.rank < attempts.rank THEN attempts.started_ts
                    WHEN excluded.started_ts < attempts.started_ts THEN excluded.started_ts
                    ELSE attempts.started_ts END,
  ended_ts = CASE WHEN excluded.rank > attempts.rank THEN excluded.ended_ts
                  WHEN excluded.rank < attempts.rank THEN attempts.ended_ts
                  WHEN attempts.ended_ts IS NULL OR excluded.ended_ts > attempts.ended_ts
                       THEN excluded.ended_ts
                  ELSE attempts.ended_ts END,
  outcome = CASE WHEN excluded.rank > attempts.rank THEN excluded.outcome
                 WHEN excluded.rank < attempts.rank THEN attempts.outcome
                 WHEN excluded.outcome = 'connected' OR attempts.outcome = 'connected' THEN 'connected'
                 ELSE 'failed' END,
  reason = CASE WHEN {take} THEN excluded.reason ELSE attempts.reason END,
  wait_seconds = CASE
    WHEN excluded.rank = attempts.rank AND excluded.outcome = 'failed' AND attempts.outcome = 'failed'
         AND excluded.ended_ts IS NOT NULL AND attempts.ended_ts IS NOT NULL
      -- one call seen in pieces (CDR records per ring attempt, queue visits): the caller waited
      -- from the first piece's start to the last one's end
      THEN (CASE WHEN excluded.ended_ts > attempts.ended_ts THEN excluded.ended_ts ELSE attempts.ended_ts END)
         - (CASE WHEN excluded.started_ts < attempts.started_ts THEN excluded.started_ts ELSE attempts.started_ts END)
    WHEN {take} THEN excluded.wait_seconds ELSE attempts.wait_seconds END,
  queue = CASE WHEN {take} THEN excluded.queue ELSE attempts.queue END,
  origin = CASE WHEN excluded.rank > attempts.rank THEN excluded.origin ELSE attempts.origin END,
  rank = CASE WHEN excluded.rank > attempts.rank THEN excluded.rank ELSE attempts.rank END
"""
# "take the incoming visit's reason": it outranks, or it connected where the stored one did
# not, or both failed and it ended later (the call's last word)
_TAKE = """(excluded.rank > attempts.rank OR (excluded.rank = attempts.rank AND (
  (excluded.outcome = 'connected' AND attempts.outcome <> 'connected') OR
  (excluded.outcome = attempts.outcome AND excluded.outcome = 'failed'
     AND COALESCE(excluded.ended_ts, 0) >= COALESCE(attempts.ended_ts, 0)))))"""
#: Attempt's own field order, plus rank
COLUMNS = ("system", "call_id", "caller", "number", "started_ts", "ended_ts", "outcome", "reason",
           "wait_seconds", "queue", "origin", "rank")
_NUMBER, _STARTED, _ENDED = 3, 4, 5
_SYSTEM, _CALL_ID, _NUMBER_OF, _STARTED_OF, _ENDED_OF = map(operator.itemgetter, (0, 1, _NUMBER, _STARTED, _ENDED))
#: the upsert as driver SQL, per DBAPI paramstyle: executemany straight on the driver
#: (SQLAlchemy's per-row parameter processing cost more than SQLite's insert itself)
UPSERT_SQL = {
    style: _UPSERT.format(take=_TAKE, source="VALUES (" + ", ".join([mark] * len(COLUMNS)) + ")")
    for style, mark in (("qmark", "?"), ("format", "%s"), ("pyformat", "%s"))
}
#: a PostgreSQL batch this large goes in by binary COPY (`_copy_upsert`) instead of one upsert per row; a live
#: tail's batch of a few rows keeps the executemany upsert (COPY's extra round trips cost as much as ~30-50
#: upserts; at 100 rows it takes half the time, at 1,000 a third)
COPY_MIN = 100
#: the session's staging table of `_copy_upsert`: emptied by each commit and rollback (ON COMMIT DELETE ROWS; a
#: rolled-back CREATE is gone with its transaction), so it holds exactly the batch COPYed in this transaction
STAGE = "attempts_in"
STAGE_DDL = (f"CREATE TEMPORARY TABLE IF NOT EXISTS {STAGE} (system text, call_id text, caller text, number text, "
             "started_ts int8, ended_ts int8, outcome text, reason text, wait_seconds int4, queue text, origin text, "
             "rank int2) ON COMMIT DELETE ROWS")
#: COLUMNS' types, as the attempts table has them (a value too long for it fails as the upsert's would)
COPY_TYPES = ["text", "text", "text", "text", "int8", "int8", "text", "text", "int4", "text", "text", "int2"]
STAGE_COPY = f"COPY {STAGE} ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
ATTEMPTS_COPY = f"COPY attempts ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
#: the same statement as UPSERT_SQL, merge rules and all, its rows read from the staging table (in the order
#: COPYed: the ids follow the batch, as the executemany's do)
STAGED_UPSERT_SQL = _UPSERT.format(take=_TAKE, source=f"SELECT {', '.join(COLUMNS)} FROM {STAGE}")
#: the stored call ids inside a batch's range (PostgreSQL), bounded as on SQLite (see `_store_rows`)
STORED_IN_RANGE_SQL = ("SELECT call_id FROM attempts WHERE system = %(system)s AND call_id BETWEEN %(lo)s AND %(hi)s "
                       "LIMIT %(limit)s")


#: plain INSERT for keys known to be new (checked in the same write transaction): no conflict machinery
INSERT_SQL = ("INSERT INTO attempts (" + ", ".join(COLUMNS) + ") VALUES (" + ", ".join(["?"] * len(COLUMNS))
              + ")")
_TEXT = {**{o: o.value for o in Outcome}, **{o: o.value for o in Origin}}
_RANK = {o: o.rank for o in Origin}
#: the attempts index a backfill may keep while it loads (`BulkLoad`'s keep_time_index)
TIME_INDEX = "ix_attempts_started_ts"
#: a batch this large (SQLite) checks which of its keys exist with one range query on the unique index,
#: INSERTs the new ones plainly and upserts only the rest
FRESH_MIN = 256


def plain_row(a: Attempt) -> tuple[Any, ...]:
    """An attempt as a row in COLUMNS order with plain values. (sqlite3 binds a str subclass such as
    the StrEnum members through its adapter lookup: about 1 µs a row more than a plain str.)"""
    o = a[10]
    return (a[0], a[1], a[2], a[3], a[4], a[5], _TEXT[a[6]], a[7], a[8], a[9], _TEXT[o], _RANK[o])


def _fit(row: tuple[Any, ...]) -> tuple[Any, ...]:
    caller, queue = row[2], row[9]
    if (caller and len(caller) > 80) or (queue and len(queue) > 80):
        return (*row[:2], caller[:80] if caller else caller, *row[3:9], queue[:80] if queue else queue, *row[10:])
    return row


def merge_rows(old_row: tuple[Any, ...], new_row: tuple[Any, ...]) -> tuple[Any, ...]:
    """In-batch twin of the SQL merge (a statement may not touch one row twice)."""
    return tuple(_merge(dict(zip(COLUMNS, old_row, strict=True)), dict(zip(COLUMNS, new_row, strict=True))).values())


def _merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    hi, lo = (new, old) if new["rank"] > old["rank"] else (old, new)
    out = dict(hi)
    out["number"] = hi["number"] or lo["number"]
    out["caller"] = hi["caller"] or lo["caller"]
    if new["rank"] == old["rank"]:
        out["started_ts"] = min(old["started_ts"], new["started_ts"])
        out["ended_ts"] = max((x for x in (old["ended_ts"], new["ended_ts"]) if x is not None), default=None)
        connected = "connected" in (old["outcome"], new["outcome"])
        out["outcome"] = "connected" if connected else "failed"
        take = (new["outcome"] == "connected" and old["outcome"] != "connected") or (
            new["outcome"] == old["outcome"] == "failed" and (new["ended_ts"] or 0) >= (old["ended_ts"] or 0)
        )
        src = new if take else old
        out["reason"], out["wait_seconds"], out["queue"] = src["reason"], src["wait_seconds"], src["queue"]
        if (old["outcome"] == new["outcome"] == "failed" and old["ended_ts"] is not None
                and new["ended_ts"] is not None):
            out["wait_seconds"] = out["ended_ts"] - out["started_ts"]
        out["origin"] = old["origin"]
    return out


@dataclass(frozen=True, slots=True)
class CursorWrite:
    name: str
    path: str | None
    device: int | None
    inode: int | None
    offset: int
    head: str | None
    state: dict[str, Any] | None


@dataclass(slots=True)
class IngestResult:
    attempts: int = 0
    dead_letters: int = 0
    opened: list[int] = field(default_factory=list)
    cancelled: list[int] = field(default_factory=list)
    grown: int = 0
    #: (event, fields) lines to log once the transaction is committed (`Ingestor.ingest_rows`)
    lines: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


class Ingestor:
    """Writes batches of attempts and opens/cancels callbacks as detection says."""

    def __init__(self, store: Store, clock: Clock, rules: DetectRules,
                 on_opened: Callable[[list[int]], None] | None = None) -> None:
        self.store = store
        self.clock = clock
        self.rules = rules
        #: called after a commit that opened callbacks (the daemon plans them right away)
        self.on_opened = on_opened
        self._since_analyze = 0
        #: where callbacks opened and cancelled are logged (a structlog logger); silent unless the daemon sets one
        self.log: Any = _SILENT

    def ingest(
        self,
        attempts: Sequence[Attempt],
        dead: Sequence[DeadLetter] = (),
        cursor: CursorWrite | None = None,
    ) -> IngestResult:
        return self.ingest_rows([plain_row(a) for a in attempts], dead, cursor)

    def ingest_rows(
        self,
        rows: Sequence[tuple[Any, ...]],
        dead: Sequence[DeadLetter] = (),
        cursor: CursorWrite | None = None,
    ) -> IngestResult:
        """`ingest` for attempts already in row form (`plain_row`; QueueLogParser.feed_rows)."""
        result = IngestResult()
        now = self.clock.now()
        batch = _merged(rows if self.store.is_sqlite else [_fit(r) for r in rows])
        with self.store.write() as conn:
            if batch:
                self._store_rows(conn, batch)
                result.attempts = len(batch)
            if dead:
                result.dead_letters = self._dead_letters(conn, dead, now)
            if cursor is not None:
                save_cursor(conn, cursor, now)
            touched, recent = _numbers(batch, now_ts=int(now.timestamp()), lookback=self.rules.lookback_seconds)
            self._detect(conn, touched, recent, now, result)
        for event, fields in result.lines:  # committed: each callback can be followed through the log
            self.log.info(event, **fields)
        if result.opened and self.on_opened is not None:
            self.on_opened(result.opened)
        self._analyze_after(len(batch))
        return result

    def bulk(self, **options: Any) -> BulkLoad:
        """Many batches of a backfill in as few transactions as is safe; see `BulkLoad` (and its options)."""
        return BulkLoad(self, **options)

    def _analyze_after(self, rows: int) -> None:
        self._since_analyze += rows
        if self._since_analyze >= 50_000 and not self.store.is_sqlite:
            # a bulk import into a young table: fresh statistics keep the detection query on its index
            with self.store.write() as conn:
                conn.exec_driver_sql("ANALYZE attempts")
            self._since_analyze = 0

    def _store_rows(self, conn: Connection, rows: list[tuple[Any, ...]]) -> None:
        """Upsert by (system, call_id). On SQLite (one writer: BEGIN IMMEDIATE) a large batch asks the
        unique index which of its keys exist, in one range query, INSERTs the others plainly and sends
        only those through the merge rules; a re-import finds them all and upserts them all. On PostgreSQL
        a large batch goes in by COPY (`_copy_upsert`). `rows` has one row per key (`_merged`)."""
        upsert = UPSERT_SQL[conn.dialect.paramstyle]
        if not self.store.is_sqlite:
            if len(rows) >= COPY_MIN:
                _copy_upsert(conn, rows)
            else:
                conn.exec_driver_sql(upsert, rows)
            return
        if len(rows) < FRESH_MIN:
            conn.exec_driver_sql(upsert, rows)
            return
        systems = set(map(_SYSTEM, rows))
        groups = [(rows[0][0], rows)] if len(systems) == 1 else [
            (system, [r for r in rows if r[0] == system]) for system in sorted(systems)]
        for system, part in groups:
            # (bounded: call ids that do not follow time, such as Twilio's, can make the range the
            # whole table; past the bound the batch is simply upserted)
            limit = 2 * len(part) + 1000
            existing = {cid for (cid,) in conn.exec_driver_sql(
                "SELECT call_id FROM attempts WHERE system = ? AND call_id BETWEEN ? AND ? LIMIT ?",
                (system, min(map(_CALL_ID, part)), max(map(_CALL_ID, part)), limit))}
            if len(existing) >= limit:
                conn.exec_driver_sql(upsert, part)
                continue
            if existing:
                old = [r for r in part if r[1] in existing]
                if old:
                    part = [r for r in part if r[1] not in existing]
                    conn.exec_driver_sql(upsert, old)
            if part:
                conn.exec_driver_sql(INSERT_SQL, part)

    # -- dead letters -------------------------------------------------------------
    def _dead_letters(self, conn: Connection, dead: Sequence[DeadLetter], now: datetime) -> int:
        values = []
        for d in dead:
            # the same line of the same file is stored once, whatever the path it was read under
            # (a rotated, renamed or gzipped copy): the digest takes the offset, not the path
            where = d.position.rsplit(":", 1)[-1]
            digest = hashlib.sha256(d.source.encode() + b"\0" + where.encode() + b"\0" + d.raw).hexdigest()
            values.append({"source": d.source, "position": d.position[:512], "raw": d.raw,
                           "reason": d.reason, "digest": digest, "created_at": now})
        stmt = _insert_ignore(conn, t.dead_letters)
        conn.execute(stmt, values)
        return len(values)

    # -- detection ----------------------------------------------------------------
    def _detect(self, conn: Connection, touched: set[str], recent: set[str], now: datetime,
                result: IngestResult) -> None:
        """Detection for the numbers a batch touched that have attempts inside the lookback window, and
        those with an open callback (a late attempt can still grow or cancel it)."""
        if not touched:
            return
        now_ts = int(now.timestamp())
        since = now_ts - self.rules.lookback_seconds
        open_numbers = {n for (n,) in conn.execute(
            sa.select(t.callbacks.c.number).where(t.callbacks.c.state.in_(_OPEN)))}
        candidates = sorted(recent | (touched & open_numbers))
        for i in range(0, len(candidates), 400):
            self._detect_chunk(conn, candidates[i:i + 400], now, now_ts, since, result)

    def _detect_chunk(self, conn: Connection, numbers: list[str], now: datetime, now_ts: int, since: int,
                      result: IngestResult) -> None:
        cb = t.callbacks
        open_eps: dict[str, OpenEpisode] = {}
        untouched: dict[str, tuple[int, int]] = {}  # open, never worked: (episode start, trigger)
        for row in conn.execute(
            sa.select(cb.c.id, cb.c.number, cb.c.episode_start, cb.c.failures, cb.c.state, cb.c.dial_attempts,
                      cb.c.triggered_at, cb.c.kind)
            .where(cb.c.number.in_(numbers), cb.c.state.in_(_OPEN))
        ):
            open_eps[row.number] = OpenEpisode(row.id, int(row.episode_start.timestamp()), row.failures,
                                               self._start_call(conn, row.id))
            if (row.kind == "recall" and row.dial_attempts == 0
                    and row.state in (State.PENDING.value, State.SCHEDULED.value)):
                untouched[row.number] = (int(row.episode_start.timestamp()), int(row.triggered_at.timestamp()))
        boundary: dict[str, int] = {}
        for number, closed in conn.execute(
            sa.select(cb.c.number, sa.func.max(cb.c.closed_at))
            # a retraction ('reclassified') says the callback should never have been opened: it is
            # stamped with the wall clock, and as a boundary it would hide the caller's later streaks
            .where(cb.c.number.in_(numbers), cb.c.closed_at.is_not(None),
                   sa.or_(cb.c.outcome.is_(None), cb.c.outcome != "reclassified"))
            .group_by(cb.c.number)
        ):
            if closed is not None:
                if isinstance(closed, str):  # SQLite aggregate bypasses the column type
                    closed = datetime.fromisoformat(closed)
                boundary[number] = int(closed.timestamp())
        floor = min([since, *(e.episode_start_ts for e in open_eps.values())])
        a = t.attempts
        per_number: dict[str, list[AttemptView]] = {n: [] for n in numbers}
        for row in conn.execute(
            sa.select(a.c.id, a.c.number, a.c.started_ts, a.c.call_id, a.c.outcome, a.c.reason, a.c.wait_seconds)
            .where(a.c.number.in_(numbers), a.c.started_ts >= floor)
            .order_by(a.c.number, a.c.started_ts, a.c.call_id)
        ):
            per_number[row.number].append(
                AttemptView(row.id, row.started_ts, row.call_id, Outcome(row.outcome), row.reason, row.wait_seconds)
            )
        for number in numbers:
            if number in untouched and self._rederive(conn, number, per_number[number], open_eps[number],
                                                      untouched[number], now_ts, boundary.get(number), now):
                continue
            actions = detect(per_number[number], now_ts=now_ts, rules=self.rules,
                             open_episode=open_eps.get(number), closed_boundary_ts=boundary.get(number))
            for action in actions:
                if isinstance(action, Open):
                    cid = self._open(conn, number, action, now)
                    if cid is not None:
                        result.opened.append(cid)
                        result.lines.append(("callback.opened", {
                            "callback_id": cid, "number": mask(number), "failures": action.failures,
                            "trigger_call_id": action.trigger_call_id}))
                        if action.cancelled_by is not None:
                            result.cancelled.append(cid)
                            result.lines.append(("callback.cancelled", {
                                "callback_id": cid, "actor": "detector", "reason": "self-resolved",
                                "call_id": action.cancelled_by.call_id}))
                elif isinstance(action, Grow):
                    if self._grow(conn, action, now):
                        result.grown += 1
                elif isinstance(action, Cancel):
                    if self._cancel(conn, action, now):
                        result.cancelled.append(action.callback_id)
                        result.lines.append(("callback.cancelled", {
                            "callback_id": action.callback_id, "actor": "detector", "reason": "self-resolved",
                            "call_id": action.by.call_id, "number": mask(number)}))

    def _start_call(self, conn: Connection, callback_id: int) -> str:
        """The call id of an open episode's first failure (orders ties within one second)."""
        a, ca = t.attempts, t.callback_attempts
        row = conn.execute(sa.select(a.c.call_id).join(ca, ca.c.attempt_id == a.c.id)
                           .where(ca.c.callback_id == callback_id)
                           .order_by(a.c.started_ts, a.c.call_id).limit(1)).first()
        return row.call_id if row is not None else ""

    def _rederive(self, conn: Connection, number: str, views: list[AttemptView], ep: OpenEpisode,
                  stored: tuple[int, int], now_ts: int, boundary: int | None, now: datetime) -> bool:
        """A callback nobody has worked yet follows its attempts when a better source re-classifies them
        (queue_log over CDR): its episode moves, or it is cancelled if the streak is gone. Returns
        True when it handled the number."""
        fresh = detect(views, now_ts=now_ts, rules=self.rules, open_episode=None, closed_boundary_ts=boundary)
        opens = [a for a in fresh if isinstance(a, Open)]
        if any(o.cancelled_by is not None and o.cancelled_by.started_ts > ep.episode_start_ts for o in opens):
            # the caller got through during the stored episode: that is a self-resolution, not a
            # re-classification; the usual path cancels it and opens the next streak on its own
            return False
        current = opens[-1] if opens and opens[-1].cancelled_by is None else None
        if current is None:
            if opens:  # the streak ended with a connected call: the usual path cancels it
                return False
            self._close_reclassified(conn, ep.callback_id, now)
            return True
        if (current.episode_start_ts, current.triggered_ts) == stored:
            return False
        cb = t.callbacks
        conn.execute(sa.update(cb).where(cb.c.id == ep.callback_id).values(
            episode_start=utc_from_ts(current.episode_start_ts), triggered_at=utc_from_ts(current.triggered_ts),
            last_failed_at=utc_from_ts(current.last_failed_ts), failures=current.failures, updated_at=now))
        conn.execute(sa.delete(t.callback_attempts).where(t.callback_attempts.c.callback_id == ep.callback_id))
        self._link(conn, ep.callback_id, current.attempt_ids)
        ev = t.callback_events
        conn.execute(sa.update(ev).where(ev.c.callback_id == ep.callback_id, ev.c.event == "opened",
                                         ev.c.actor == "detector")
                     .values(at=utc_from_ts(current.triggered_ts),
                             detail=json.dumps({"threshold": self.rules.threshold,
                                                "trigger_call_id": current.trigger_call_id}, sort_keys=True)))
        return True

    def _close_reclassified(self, conn: Connection, callback_id: int, now: datetime) -> None:
        cb = t.callbacks
        state = conn.execute(sa.select(cb.c.state).where(cb.c.id == callback_id)).scalar()
        conn.execute(sa.update(cb).where(cb.c.id == callback_id).values(
            state=State.CANCELLED.value, outcome="reclassified", closed_at=now, updated_at=now,
            close_reason="a more exact source re-classified the attempts: no longer a streak of failures"))
        conn.execute(t.callback_events.insert(), [_ev(callback_id, now, "detector", "cancelled", state,
                                                      State.CANCELLED, {"reason": "reclassified"})])

    def _open(self, conn: Connection, number: str, action: Open, now: datetime) -> int | None:
        triggered = utc_from_ts(action.triggered_ts)
        values: dict[str, Any] = {
            "kind": "recall", "number": number, "state": State.PENDING.value, "priority": 0,
            "failures": action.failures, "episode_start": utc_from_ts(action.episode_start_ts),
            "triggered_at": triggered, "last_failed_at": utc_from_ts(action.last_failed_ts),
            "due_at": triggered, "dial_attempts": 0, "created_at": now, "updated_at": now,
        }
        by = action.cancelled_by
        if by is not None:
            values.update(state=State.CANCELLED.value, closed_at=utc_from_ts(by.started_ts),
                          outcome="self-resolved", close_reason=f"got through on call {by.call_id}")
        elif conn.execute(sa.select(t.do_not_contact.c.number).where(t.do_not_contact.c.number == number)).first():
            # the citizen asked not to be contacted (STOP / 退订): record the episode, never call
            values.update(state=State.CANCELLED.value, closed_at=now, outcome="do-not-contact",
                          close_reason="number is on the do-not-contact list")
        stmt = _insert_ignore(conn, t.callbacks).returning(t.callbacks.c.id)
        cid = conn.execute(stmt, values).scalar()
        if cid is None:
            return None
        events = [_ev(cid, triggered, "detector", "opened", None, State.PENDING,
                      {"threshold": self.rules.threshold, "trigger_call_id": action.trigger_call_id})]
        if by is not None:
            events.append(_ev(cid, utc_from_ts(by.started_ts), "detector", "cancelled", State.PENDING,
                              State.CANCELLED, {"reason": "self-resolved", "call_id": by.call_id}))
        elif values.get("outcome") == "do-not-contact":
            events.append(_ev(cid, now, "detector", "cancelled", State.PENDING, State.CANCELLED,
                              {"reason": "do-not-contact"}))
        conn.execute(t.callback_events.insert(), events)
        self._link(conn, cid, action.attempt_ids)
        return cid

    def _grow(self, conn: Connection, action: Grow, now: datetime) -> bool:
        cb = t.callbacks
        last = utc_from_ts(action.last_failed_ts)
        changed = conn.execute(
            cb.update()
            .where(cb.c.id == action.callback_id, cb.c.state.in_(_OPEN),
                   sa.or_(cb.c.failures != action.failures, cb.c.last_failed_at != last))
            .values(failures=action.failures, last_failed_at=last, updated_at=now)
        ).rowcount
        self._link(conn, action.callback_id, action.attempt_ids)
        return bool(changed)

    def _cancel(self, conn: Connection, action: Cancel, now: datetime) -> bool:
        cb = t.callbacks
        at = utc_from_ts(action.by.started_ts)
        row = conn.execute(
            cb.update()
            .where(cb.c.id == action.callback_id, cb.c.state.in_(_OPEN))
            .values(state=State.CANCELLED.value, closed_at=at, outcome="self-resolved",
                    close_reason=f"got through on call {action.by.call_id}", claimed_by=None,
                    lease_until=None, updated_at=now)
            .returning(cb.c.id)
        ).first()
        if row is None:
            return False
        prev = conn.execute(
            sa.select(t.callback_events.c.to_state).where(t.callback_events.c.callback_id == action.callback_id)
            .order_by(t.callback_events.c.id.desc()).limit(1)
        ).scalar()
        conn.execute(t.callback_events.insert(), [_ev(
            action.callback_id, at, "detector", "cancelled", prev, State.CANCELLED,
            {"reason": "self-resolved", "call_id": action.by.call_id})])
        return True

    def _link(self, conn: Connection, callback_id: int, attempt_ids: list[int]) -> None:
        if attempt_ids:
            conn.execute(_insert_ignore(conn, t.callback_attempts),
                         [{"callback_id": callback_id, "attempt_id": i} for i in attempt_ids])


class BulkLoad:
    """A backfill's batches, written as `Ingestor.ingest_rows` would, in fewer transactions.

    On SQLite, when the rows still to come are at least as many as the table holds, one
    transaction takes up to `max_rows` of them: the attempts table's secondary indexes are
    dropped at its start and built again at its end (SQLite sorts the keys once: much cheaper
    than a random-order insert per row into the (number, started_ts) index), and detection
    runs then, once, for every number the transaction touched. The DDL is inside the
    transaction, so a crash rolls it back with the rows; readers keep their snapshot; the
    daemon's own writes wait for the commit (`max_rows` bounds that wait). Otherwise, and on
    PostgreSQL, each batch is its own `ingest_rows` transaction (its attempts COPYed: `_copy_upsert`; a
    commit per batch costs PostgreSQL ~5 ms, and no index can be dropped there without locking readers out).

    `keep_time_index` keeps the started_ts index instead: a backfill's rows come in about time
    order, so their keys go in at its right edge, ~0.3 µs a row while the rows stream in, against
    ~0.07 s per 400,000 rows to build it after the last one. Worth it only when this process would
    otherwise wait on a parse worker while the rows stream in (import_file passes it then).
    """

    def __init__(self, ingestor: Ingestor, *, max_rows: int = 1_000_000, min_rows: int = 20_000,
                 keep_time_index: bool = False) -> None:
        self.ingestor = ingestor
        self.max_rows = max_rows
        self.min_rows = min_rows
        self.keep_time_index = keep_time_index
        self.result = IngestResult()
        self._stack: contextlib.ExitStack | None = None
        self._conn: Connection | None = None
        self._indexes: list[str] = []
        self._rows = 0
        self._touched: set[str] = set()
        self._recent: set[str] = set()

    def __enter__(self) -> BulkLoad:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        elif self._stack is not None:
            stack, self._stack, self._conn = self._stack, None, None
            stack.__exit__(exc_type, exc, tb)  # type: ignore[arg-type]  # rolls back, DDL included

    def add(self, rows: Sequence[tuple[Any, ...]], dead: Sequence[DeadLetter] = (), *, more: int = 0) -> None:
        """One batch; `more` estimates the rows still to come after it."""
        ing = self.ingestor
        if self._conn is None and not self._begin(len(rows) + more):
            self._merge(ing.ingest_rows(rows, dead))
            return
        conn = self._conn
        assert conn is not None
        now = ing.clock.now()
        batch = _merged(rows)
        if batch:
            ing._store_rows(conn, batch)
            self.result.attempts += len(batch)
            touched, recent = _numbers(batch, now_ts=int(now.timestamp()), lookback=ing.rules.lookback_seconds)
            self._touched |= touched
            self._recent |= recent
            self._rows += len(batch)
        if dead:
            self.result.dead_letters += ing._dead_letters(conn, dead, now)
        if self._rows >= self.max_rows:
            self._commit()

    def close(self) -> IngestResult:
        if self._conn is not None:
            self._commit()
        return self.result

    def _begin(self, expected: int) -> bool:
        ing = self.ingestor
        if not ing.store.is_sqlite or expected < self.min_rows:
            return False
        with contextlib.ExitStack() as stack:
            conn = stack.enter_context(ing.store.write())
            if (conn.exec_driver_sql("SELECT max(id) FROM attempts").scalar() or 0) > expected:
                return False
            self._indexes = drop_attempt_indexes(conn, keep=TIME_INDEX if self.keep_time_index else "")
            # a 64 MiB page cache for the backfill's transaction (its upserts and detection reads); given back
            # at its end, as the pool's connections live as long as the daemon
            conn.exec_driver_sql(f"PRAGMA cache_size = {BULK_CACHE_KIB}")
            stack.callback(_reset_cache, conn)
            self._conn, self._stack = conn, stack.pop_all()
        return True

    def _commit(self) -> None:
        ing, conn, stack = self.ingestor, self._conn, self._stack
        assert conn is not None and stack is not None
        part = IngestResult()
        with stack:
            build_indexes(conn, self._indexes)
            ing._detect(conn, self._touched, self._recent, ing.clock.now(), part)
        self._stack = self._conn = None
        rows, self._rows = self._rows, 0
        self._touched, self._recent = set(), set()
        self._merge(part)
        if part.opened and ing.on_opened is not None:
            ing.on_opened(part.opened)
        ing._analyze_after(rows)

    def _merge(self, r: IngestResult) -> None:
        res = self.result
        res.attempts += r.attempts
        res.dead_letters += r.dead_letters
        res.opened += r.opened
        res.cancelled += r.cancelled
        res.grown += r.grown


#: SQLite page cache (KiB, negative) of a backfill's transaction
BULK_CACHE_KIB = -65536


class _NoLog:
    def info(self, *_: Any, **__: Any) -> None:
        return None


_SILENT = _NoLog()


def drop_attempt_indexes(conn: Connection, keep: str = "") -> list[str]:
    """SQLite: drop the attempts' secondary indexes (not the UNIQUE constraint's, which has no sql, nor
    `keep`) inside the caller's transaction; returns their CREATE statements for `build_indexes`."""
    indexes = conn.exec_driver_sql(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'attempts' "
        "AND sql IS NOT NULL AND name <> ? ORDER BY name", (keep,)).all()
    for name, _sql in indexes:
        conn.exec_driver_sql(f'DROP INDEX "{name}"')
    return [sql for _name, sql in indexes]


def build_indexes(conn: Connection, statements: Sequence[str]) -> None:
    """SQLite: run CREATE INDEX statements as a backfill does, the connection's settings given back after.

    SQLite sorts the keys in runs of at most the page cache and merges them; helper threads sort runs
    while the next ones fill (a parse worker is done by now: its core is free). 400,000 rows'
    (number, started_ts) keys: 0.17 s in 4 MiB runs without helpers, 0.12 s in 1 MiB runs with two
    (4 MiB runs with two: 0.15 s)."""
    if not statements:
        return
    size = conn.exec_driver_sql("PRAGMA cache_size").scalar()
    conn.exec_driver_sql("PRAGMA cache_size = -1024")
    conn.exec_driver_sql("PRAGMA threads = 2")
    try:
        for sql in statements:
            conn.exec_driver_sql(sql)
    finally:
        conn.exec_driver_sql("PRAGMA threads = 0")  # SQLite's default, as pooled connections had it
        conn.exec_driver_sql(f"PRAGMA cache_size = {int(size)}")


def _reset_cache(conn: Connection) -> None:
    from .store import SQLITE_CACHE_KIB

    with contextlib.suppress(Exception):  # the connection may be going away with a rollback
        conn.exec_driver_sql(f"PRAGMA cache_size = {SQLITE_CACHE_KIB}")


def _copy_upsert(conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """PostgreSQL: upsert a batch (one row per key, `_merged`; `_fit`ted) in the caller's transaction, by binary COPY.

    A batch none of whose keys is stored yet (a backfill's, a live tail's: one range query on the unique index
    says so) is COPYed straight into attempts: a plain insert, without ON CONFLICT's speculative insertion (it
    cost the server 60-100% more than the insert itself). Another writer may store one of its keys meanwhile
    (or the range, compared in the database's collation, missed one): the unique index refuses the COPY, it is
    rolled back to its savepoint, and the batch takes the other way. That way (keys already stored: a
    re-import, CDR after queue_log) COPYs the batch into the staging table and merges it with one
    INSERT .. SELECT .. ON CONFLICT, the upsert's own statement and merge rules: one statement, not one a row."""
    if not _any_stored(conn, rows):
        try:
            with conn.begin_nested():
                _copy(conn, ATTEMPTS_COPY, rows)
            return
        except sa.exc.IntegrityError as exc:
            if getattr(exc.orig, "sqlstate", None) != "23505":  # unique_violation: a key is stored after all
                raise
    conn.exec_driver_sql(STAGE_DDL)
    _copy(conn, STAGE_COPY, rows)
    conn.exec_driver_sql(STAGED_UPSERT_SQL)


def _any_stored(conn: Connection, rows: Sequence[tuple[Any, ...]]) -> bool:
    """Whether a key of the batch may be stored: the stored call ids between its least and greatest (a
    backfill's batches border on each other: calls that straddle the border), or more of them than the bound."""
    systems = set(map(_SYSTEM, rows))
    for system in sorted(systems):
        part = rows if len(systems) == 1 else [r for r in rows if r[0] == system]
        ids = set(map(_CALL_ID, part))
        limit = 2 * len(ids) + 1000
        found = conn.exec_driver_sql(STORED_IN_RANGE_SQL, {"system": system, "lo": min(ids), "hi": max(ids),
                                                           "limit": limit}).scalars().all()
        if len(found) >= limit or not ids.isdisjoint(found):
            return True
    return False


def _copy(conn: Connection, statement: str, rows: Sequence[tuple[Any, ...]]) -> None:
    with _driver_errors(conn, statement) as dbapi_conn, dbapi_conn.cursor() as cur, cur.copy(statement) as copy:
        copy.set_types(COPY_TYPES)
        write = copy.write_row
        for r in rows:
            write(r)


@contextlib.contextmanager
def _driver_errors(conn: Connection, statement: str) -> Iterator[Any]:
    """The DBAPI connection under `conn`, for what SQLAlchemy cannot send (COPY); its errors come out as
    SQLAlchemy's would (a lost connection invalidated: `Store` reports an outage, the pool drops it)."""
    dbapi_conn = conn.connection.driver_connection
    dbapi = conn.dialect.loaded_dbapi
    try:
        yield dbapi_conn
    except dbapi.Error as exc:
        lost = conn.dialect.is_disconnect(exc, dbapi_conn, None)
        if lost:
            conn.invalidate(exc)
        raise sa.exc.DBAPIError.instance(statement, None, exc, dbapi.Error, connection_invalidated=lost,
                                         dialect=conn.dialect) from exc


def _merged(rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The batch with one row per (system, call_id), merged in order (a statement may not touch a row
    twice). Rows of one system with distinct call ids, the usual batch, are taken as they are."""
    if not rows:
        return []
    if len(set(map(_CALL_ID, rows))) == len(rows) and len(set(map(_SYSTEM, rows))) == 1:
        return list(rows)
    out: dict[tuple[str, str], tuple[Any, ...]] = {}
    for r in rows:
        key = (r[0], r[1])
        prior = out.get(key)
        out[key] = r if prior is None else merge_rows(prior, r)
    return list(out.values())


def _numbers(rows: Iterable[tuple[Any, ...]], *, now_ts: int, lookback: int) -> tuple[set[str], set[str]]:
    """(numbers the rows touch, those with an attempt that ended inside the lookback window)."""
    since = now_ts - lookback
    touched = set(map(_NUMBER_OF, rows))
    touched.discard(None)  # type: ignore[arg-type]
    touched.discard("")
    # (map/filter run in C: a backfill's batches are all older than the window, and say so quickly)
    if max(max(map(_STARTED_OF, rows), default=0), max(filter(None, map(_ENDED_OF, rows)), default=0)) < since:
        return touched, set()
    recent = {r[_NUMBER] for r in rows if r[_NUMBER] and (r[_ENDED] or r[_STARTED]) >= since}
    return touched, recent


def _ev(cid: int, at: datetime, actor: str, event: str, frm: State | str | None, to: State | str | None,
        detail: dict[str, Any]) -> dict[str, Any]:
    return {"callback_id": cid, "at": at, "actor": actor, "event": event,
            "from_state": str(frm) if frm is not None else None,
            "to_state": str(to) if to is not None else None,
            "detail": json.dumps(detail, sort_keys=True, ensure_ascii=False)}


def _insert_ignore(conn: Connection, table: sa.Table) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table).on_conflict_do_nothing()


def save_cursor(conn: Connection, c: CursorWrite, now: datetime) -> None:
    values = {"name": c.name, "path": c.path, "device": c.device, "inode": c.inode, "offset": c.offset,
              "head": c.head, "state": json.dumps(c.state) if c.state is not None else None,
              "updated_at": now}
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(t.source_cursors).values(values)
    stmt = stmt.on_conflict_do_update(index_elements=["name"],
                                      set_={k: stmt.excluded[k] for k in values if k != "name"})
    conn.execute(stmt)


def load_cursor(store: Store, name: str) -> CursorWrite | None:
    with store.read() as conn:
        row = conn.execute(sa.select(t.source_cursors).where(t.source_cursors.c.name == name)).first()
    if row is None:
        return None
    return CursorWrite(row.name, row.path, row.device, row.inode, row.offset, row.head,
                       json.loads(row.state) if row.state else None)
