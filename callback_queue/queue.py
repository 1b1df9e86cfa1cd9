"""The callback queue as operators work it: list, show, claim, close, release, cancel.

A claim is one atomic statement (FOR UPDATE SKIP LOCKED on PostgreSQL; on
SQLite the BEGIN IMMEDIATE transaction serializes writers), and it is a
lease: a claim whose lease ran out is returned to the queue by `sweep`.

Every change is logged at info once it is committed, with the callback's id and
who made it (`actor`: the operator, API user or dialer): callback.claimed (one
line per claim, the ids in a list), callback.closed / callback.retry_scheduled /
callback.unreachable, callback.released, callback.cancelled, and
callback.lease_expired for the claims a claim's sweep gave back (the daemon's
sweep job logs its own). Numbers are masked. The lines go to `log`, which the
daemon sets (a CLI command, whose stdout is its output, leaves them off).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.engine import Connection

from . import schema as t
from .callback_json import callback_json, items_json
from .callbacks import CLAIMABLE_STATES, OPEN_STATES, Callback, CloseOutcome, Event, State
from .clock import Clock
from .errors import InvalidTransition, LeaseLost, NotFound
from .ingest import _ev
from .numbers import mask
from .retry import DialOutcome, Retry, RetryPolicy
from .store import Store

_OPEN = tuple(s.value for s in OPEN_STATES)
_CLAIMABLE = tuple(s.value for s in CLAIMABLE_STATES)
_PLANNED = (State.SCHEDULED.value, State.RETRY_WAIT.value)
cb = t.callbacks

#: the default order: priority, then more failures first, then longest waiting
ORDER = (cb.c.priority.desc(), cb.c.failures.desc(), cb.c.triggered_at.asc(), cb.c.id.asc())


def _open_first(state: Any) -> Any:
    """A list of every state puts the open callbacks (the work) before the closed ones, each in ORDER."""
    return sa.case((state.in_(_lit(*_OPEN)), 0), else_=1)
#: "now" in statements built once and run many times (the API's list and claim)
_NOW = sa.bindparam("now", type_=cb.c.due_at.type)
#: claims of up to this many callbacks get a statement each, with the count written in (`_claim_ctes`)
_LITERAL_COUNTS = 64


def _lit(*values: str) -> list[Any]:
    """Constant states as SQL literals, not parameters: a prepared (generic) plan can then still use the
    partial indexes whose predicates name them (ix_callbacks_due_order, ix_callbacks_lease_until)."""
    return [sa.literal_column(f"'{v}'") for v in values]


def _lease_ran_out(now: Any) -> Any:
    """An operator's claim whose lease ran out (automatic dials are reconciled by the dispatcher instead)."""
    return sa.and_(cb.c.state == _lit(State.DIALING.value)[0], cb.c.lease_until < now, cb.c.dialer.is_(None))


def _pre_claim_sql(table: Any) -> Any:
    """SQL for `_pre_claim_state` over `table`'s columns (the callbacks table or a CTE returning its columns)."""
    return sa.case((table.c.dial_attempts > 0, _lit(State.RETRY_WAIT.value)[0]),
                   (table.c.window_start.is_not(None), _lit(State.SCHEDULED.value)[0]),
                   else_=_lit(State.PENDING.value)[0])


def _order_key(c: Callback) -> tuple[Any, ...]:
    return (-c.priority, -c.failures, c.triggered_at, c.id)


@dataclass(frozen=True, slots=True)
class AttemptRow:
    id: int
    system: str
    call_id: str
    number: str | None
    started_ts: int
    ended_ts: int | None
    outcome: str
    reason: str
    wait_seconds: int | None
    queue: str | None
    origin: str


@dataclass(frozen=True, slots=True)
class CallbackDetail:
    callback: Callback
    attempts: list[AttemptRow]
    events: list[Event]


class CallbackQueue:
    def __init__(self, store: Store, clock: Clock, retry: RetryPolicy | None = None,
                 lease: timedelta = timedelta(minutes=15), *, planned: bool = False) -> None:
        self.store = store
        self.clock = clock
        self.retry = retry or RetryPolicy()
        #: statements built once per shape (building the due list's union costs more than running it)
        self._statements: dict[tuple[Any, ...], Any] = {}
        #: with off-peak windows configured, only callbacks the planner put into a window that is
        #: open now can be claimed; without, anything due can
        self.planned = planned
        self.lease = lease
        #: where each change of a callback is logged (a structlog logger); silent unless the daemon sets one
        self.log: Any = SILENT
        #: list_json and claim_json have PostgreSQL write the JSON (off: the Python path, as on SQLite;
        #: bench/api.py --python-json measures the two against each other)
        self.json_in_sql = not store.is_sqlite

    @property
    def planned(self) -> bool:
        return self._planned

    @planned.setter
    def planned(self, value: bool) -> None:  # a reload may switch it: the statements built so far are stale
        self._planned = value
        self._statements = {}

    def due_clause(self, now: Any) -> Any:
        """SQL condition: claimable right now (shared by operator claims and dialers). `now` is a datetime
        or a bound parameter."""
        # never a number on the do-not-contact list (STOP / 退订 replies, operators)
        listed = sa.exists().where(t.do_not_contact.c.number == cb.c.number)
        if self.planned:
            return sa.and_(cb.c.state.in_(_lit(*_PLANNED)), cb.c.due_at <= now, cb.c.window_end > now, ~listed)
        return sa.and_(cb.c.state.in_(_lit(*_CLAIMABLE)), cb.c.due_at <= now, ~listed)

    # -- reading ------------------------------------------------------------------
    def list(self, *, states: list[str] | None = None, due: bool = False, limit: int | None = None,
             offset: int = 0, number: str | None = None, kind: str | None = None) -> list[Callback]:
        shape = ("list", due, bool(kind), bool(states), bool(number), limit is not None, bool(offset))
        q = self._statements.get(shape)
        if q is None:
            q = self._statements[shape] = self._list_statement(*shape[1:])
        params: dict[str, Any] = {"kind": kind, "states": states, "number": number, "lim": limit, "off": offset,
                                  "lim_off": (limit or 0) + offset}
        if due:
            params["now"] = self.clock.now()
        with self.store.autocommit() as conn:  # one SELECT: no BEGIN/COMMIT round trips on PostgreSQL
            rows = conn.execute(q, params).all()
        return [Callback.from_row(r) for r in rows]

    def list_json(self, *, viewer: str, show_all: bool, limit: int, states: list[str] | None = None,
                  due: bool = False, offset: int = 0, number: str | None = None,
                  kind: str | None = None) -> tuple[str, bool]:
        """A page of `list` as the API writes it: the callbacks' JSON objects, comma-separated, and whether
        more follow. Numbers are masked except for `show_all` (an admin) and the callbacks `viewer` holds.
        PostgreSQL writes the JSON in the statement (callback_json); SQLite goes through Callback.as_json."""
        if not self.json_in_sql:
            got = self.list(states=states, due=due, limit=limit + 1, offset=offset, number=number, kind=kind)
            return items_json(got[:limit], lambda c: show_all or (c.state is State.DIALING
                                                                  and c.claimed_by == viewer)), len(got) > limit
        shape = ("list_json", due, bool(kind), bool(states), bool(number), True, bool(offset))
        q = self._statements.get(shape)
        if q is None:
            q = self._statements[shape] = self._list_json_statement(self._list_statement(*shape[1:]))
        params: dict[str, Any] = {"kind": kind, "states": states, "number": number, "lim": limit + 1,
                                  "off": offset, "lim_off": limit + 1 + offset, "page": limit, "viewer": viewer,
                                  "show_all": show_all}
        if due:
            params["now"] = self.clock.now()
        if not due or states:
            with self.store.autocommit() as conn:
                items, fetched = conn.execute(q, params).one()
            return items or "", fetched > limit
        with self.store.read() as conn:
            # the due list's generic plan is the plan every custom one is (the due-order index, read in
            # order); PostgreSQL would still plan each execution anew, as it costs the generic plan's
            # LIMIT at a tenth of the rows: half the database's CPU per page. Only for this transaction.
            conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
            items, fetched = conn.execute(q, params).one()
        return items or "", fetched > limit

    @staticmethod
    def _list_json_statement(list_statement: Any) -> Any:
        """PostgreSQL: a page (`page` rows of the list statement's `lim`) as one JSON text, and the rows
        fetched."""
        page = list_statement.subquery("page")
        show = sa.or_(sa.bindparam("show_all", type_=sa.Boolean),
                      sa.and_(page.c.state == _lit(State.DIALING.value)[0],
                              page.c.claimed_by == sa.bindparam("viewer", type_=sa.String)))
        rows = sa.select(sa.func.row_number().over(order_by=(_open_first(page.c.state), page.c.priority.desc(),
                                                             page.c.failures.desc(), page.c.triggered_at.asc(),
                                                             page.c.id.asc())).label("rn"),
                         callback_json("page", show).label("j")).subquery("r")
        items = sa.func.string_agg(rows.c.j, aggregate_order_by(sa.literal_column("','"), rows.c.rn))
        return sa.select(items.filter(rows.c.rn <= sa.bindparam("page")), sa.func.count())

    def _list_statement(self, due: bool, kind: bool, states: bool, number: bool, limited: bool,
                        offset: bool) -> Any:
        filters = []
        if kind:
            filters.append(cb.c.kind == sa.bindparam("kind"))
        if states:
            filters.append(cb.c.state.in_(sa.bindparam("states", expanding=True)))
        if number:
            filters.append(cb.c.number == sa.bindparam("number"))
        if not due:
            q = sa.select(cb).where(*filters).order_by(_open_first(cb.c.state), *ORDER)
        else:
            # two branches, each able to use its index in the queue's order (an OR of the two
            # conditions made the database sort every due row for each page)
            branches = [self.due_clause(_NOW),
                        # an operator's claim whose lease ran out is handed out again by the next claim
                        sa.and_(_lease_ran_out(_NOW), cb.c.due_at <= _NOW)]
            parts = []
            for cond in branches:
                part = sa.select(cb).where(cond, *filters).order_by(*ORDER)
                if limited:
                    part = part.limit(sa.bindparam("lim_off"))
                parts.append(sa.select(part.subquery()))
            u = sa.union_all(*parts).subquery()
            q = sa.select(u).order_by(u.c.priority.desc(), u.c.failures.desc(), u.c.triggered_at.asc(), u.c.id.asc())
        if limited:
            q = q.limit(sa.bindparam("lim"))
        if offset:
            q = q.offset(sa.bindparam("off"))
        return q

    def get(self, callback_id: int) -> CallbackDetail:
        with self.store.read() as conn:
            row = conn.execute(sa.select(cb).where(cb.c.id == callback_id)).first()
            if row is None:
                raise NotFound(f"no callback {callback_id}")
            a = t.attempts
            attempts = [
                AttemptRow(**r._mapping)
                for r in conn.execute(
                    sa.select(a.c.id, a.c.system, a.c.call_id, a.c.number, a.c.started_ts, a.c.ended_ts,
                              a.c.outcome, a.c.reason, a.c.wait_seconds, a.c.queue, a.c.origin)
                    .join(t.callback_attempts, t.callback_attempts.c.attempt_id == a.c.id)
                    .where(t.callback_attempts.c.callback_id == callback_id)
                    .order_by(a.c.started_ts, a.c.call_id)
                )
            ]
            events = [
                Event.from_row(r)
                for r in conn.execute(
                    sa.select(t.callback_events).where(t.callback_events.c.callback_id == callback_id)
                    .order_by(t.callback_events.c.at, t.callback_events.c.id)
                )
            ]
        return CallbackDetail(Callback.from_row(row), attempts, events)

    def counts(self) -> dict[str, int]:
        with self.store.read() as conn:
            return {s: n for s, n in conn.execute(sa.select(cb.c.state, sa.func.count()).group_by(cb.c.state))}

    # -- claims -------------------------------------------------------------------
    def claim(self, operator: str, count: int = 1, *, lease: timedelta | None = None) -> list[Callback]:
        """Hand out up to `count` due callbacks to `operator`, each exactly once."""
        if count < 1:
            raise ValueError("count must be at least 1")
        if not self.store.is_sqlite:
            rows, _ = self._claim_pg(operator, count, lease, as_json=False)
            return sorted((Callback.from_row(r) for r in rows), key=_order_key)
        now = self.clock.now()
        until = now + (lease or self.lease)
        with self.store.write() as conn:
            swept = self._sweep(conn, now)
            pick = sa.select(cb.c.id).where(self.due_clause(now)).order_by(*ORDER).limit(count)
            # the states they are claimed from, read first: BEGIN IMMEDIATE holds the write lock, so the
            # UPDATE below picks the same rows in the same states
            was = {r.id: r.state for r in conn.execute(pick.add_columns(cb.c.state))}
            if not was:
                claimed = []
            else:
                rows = conn.execute(
                    sa.update(cb)
                    .where(cb.c.id.in_(pick.scalar_subquery()))
                    .values(state=State.DIALING.value, claimed_by=operator, lease_until=until, updated_at=now)
                    .returning(*cb.c)
                ).all()
                claimed = sorted((Callback.from_row(r) for r in rows), key=_order_key)
            if claimed:
                conn.execute(t.callback_events.insert(), [
                    _ev(c.id, now, operator, "claimed", was[c.id], State.DIALING,
                        {"lease_until": until.isoformat()}) for c in claimed
                ])
        _log_swept(self.log, swept)
        _log_claimed(self.log, operator, [c.id for c in claimed], until,
                     claimed[0].number if len(claimed) == 1 else None)
        return claimed

    def claim_json(self, operator: str, count: int = 1, *, lease: timedelta | None = None) -> str:
        """`claim` as the API writes it: the claimed callbacks' JSON objects, comma-separated, in the queue's
        order. PostgreSQL writes the JSON in the claim statement itself (callback_json)."""
        if not self.json_in_sql:
            return items_json(self.claim(operator, count, lease=lease), lambda c: True)
        if count < 1:
            raise ValueError("count must be at least 1")
        text, _ = self._claim_pg(operator, count, lease, as_json=True)
        return text or ""

    def _claim_pg(self, operator: str, count: int, lease: timedelta | None, *, as_json: bool) -> Any:
        # two statements, each atomic on its own: the sweep, then one that picks (FOR UPDATE SKIP
        # LOCKED), updates and writes the "claimed" events; no BEGIN/COMMIT round trips
        now = self.clock.now()
        until = now + (lease or self.lease)
        detail = json.dumps({"lease_until": until.isoformat()}, sort_keys=True, ensure_ascii=False)
        params = {"now": now, "until": until, "operator": operator, "count": count, "detail": detail}
        fixed = count if count <= _LITERAL_COUNTS else None  # one statement per count up to there
        name = "claim_json" if as_json else "claim"
        q = self._statements.get((name, fixed))
        if q is None:
            q = self._statements[(name, fixed)] = (self._claim_json_statement if as_json
                                                   else self._claim_statement)(fixed)
        with self.store.autocommit() as conn:
            swept = self._sweep(conn, now)
            result = conn.execute(q, params)
            if as_json:
                got, ids = result.one()
                ids = sorted(ids or [])
            else:
                got = result.all()
                ids = [r.id for r in got]
        _log_swept(self.log, swept)
        _log_claimed(self.log, operator, ids, until, got[0].number if not as_json and len(got) == 1 else None)
        return got, ids

    def claim_one(self, callback_id: int, operator: str, *, lease: timedelta | None = None) -> Callback:
        """Claim one chosen callback, if it is due and nobody holds it (the console's "call this one")."""
        now = self.clock.now()
        until = now + (lease or self.lease)
        with self.store.write() as conn:
            swept = self._sweep(conn, now)
            # locked (PostgreSQL; SQLite's write transaction holds the lock already): the state read is the
            # state the UPDATE changes, and the one the "claimed" event records
            cur = self._one(conn, callback_id, lock=True)
            n = conn.execute(
                sa.update(cb).where(cb.c.id == callback_id, self.due_clause(now))
                .values(state=State.DIALING.value, claimed_by=operator, lease_until=until, updated_at=now)
            ).rowcount
            if not n:
                if cur.state is State.DIALING:
                    raise LeaseLost(f"callback {callback_id} is claimed by {cur.claimed_by or cur.dialer}")
                if cur.state.value in _CLAIMABLE:
                    raise InvalidTransition(f"callback {callback_id} is not due yet (due {cur.due_at.isoformat()}"
                                            f"{', in a window not open now' if self.planned else ''})")
                raise InvalidTransition(f"callback {callback_id} is {cur.state.value}; it cannot be claimed")
            conn.execute(t.callback_events.insert(), [
                _ev(callback_id, now, operator, "claimed", cur.state, State.DIALING, {"lease_until": until.isoformat()})
            ])
            after = self._one(conn, callback_id)
        _log_swept(self.log, swept)
        _log_claimed(self.log, operator, [callback_id], until, after.number)
        return after

    def close(self, callback_id: int, operator: str, outcome: CloseOutcome | str, note: str | None = None,
              *, force: bool = False) -> Callback:
        """An operator's call ended: apply the retry policy (no-answer and busy come back later)."""
        outcome = CloseOutcome(outcome)
        with self.store.write() as conn:
            cur = self._held(conn, callback_id, operator, force)
            after = self.apply_outcome(conn, cur, operator, DialOutcome(outcome.value), {"note": note} if note else {})
        log_outcome(self.log, after, operator, outcome.value, forced=force and cur.claimed_by != operator)
        return after

    def apply_outcome(self, conn: Connection, cur: Callback, actor: str, outcome: DialOutcome,
                      detail: dict[str, Any]) -> Callback:
        """Record how a call ended and move the callback on (inside the caller's transaction)."""
        now = self.clock.now()
        attempts = cur.dial_attempts + 1
        counts = dict(cur.outcome_counts or {})
        counts[outcome.value] = counts.get(outcome.value, 0) + 1
        decision = self.retry.decide(outcome, attempts=attempts, counts=counts, now=now)
        values: dict[str, Any] = {"dial_attempts": attempts, "outcome": outcome.value, "claimed_by": None,
                                  "lease_until": None, "dialer": None, "dial_ref": None,
                                  "outcome_counts": json.dumps(counts, sort_keys=True), "updated_at": now,
                                  "last_dial_at": cur.dial_started_at or now}
        if isinstance(decision, Retry):
            new = State.RETRY_WAIT
            values.update(due_at=decision.at, earliest_at=decision.at, window_start=None, window_end=None)
        else:
            new = State(decision.state)
            values["closed_at"] = now
            if new is not State.REACHED:
                values["close_reason"] = decision.reason
        values["state"] = new.value
        conn.execute(sa.update(cb).where(cb.c.id == cur.id).values(**values))
        ev: dict[str, Any] = {"outcome": outcome.value, "dial_attempts": attempts, **{k: v for k, v in detail.items()
                                                                                     if v is not None}}
        if new is State.RETRY_WAIT:
            ev["retry_at"] = values["due_at"].isoformat()
        elif new is not State.REACHED:
            ev["reason"] = decision.reason  # type: ignore[union-attr]
        conn.execute(t.callback_events.insert(), [_ev(cur.id, now, actor, "closed", cur.state, new, ev)])
        return self._one(conn, cur.id)

    def release(self, callback_id: int, operator: str, *, force: bool = False, note: str | None = None) -> Callback:
        now = self.clock.now()
        with self.store.write() as conn:
            cur = self._held(conn, callback_id, operator, force)
            back = _pre_claim_state(cur)
            conn.execute(sa.update(cb).where(cb.c.id == callback_id).values(
                state=back.value, claimed_by=None, lease_until=None, updated_at=now))
            conn.execute(t.callback_events.insert(), [_ev(callback_id, now, operator, "released", cur.state, back,
                                                          {"note": note} if note else {})])
            after = self._one(conn, callback_id)
        self.log.info("callback.released", callback_id=callback_id, actor=operator, held_by=cur.claimed_by,
                      state=back.value)
        return after

    def cancel(self, callback_id: int, actor: str, reason: str) -> Callback:
        now = self.clock.now()
        with self.store.write() as conn:
            cur = self._one(conn, callback_id, lock=True)   # the state the event records stays the state changed
            if not cur.state.is_open:
                raise InvalidTransition(f"callback {callback_id} is {cur.state.value}; only open callbacks can be "
                                        "cancelled")
            conn.execute(sa.update(cb).where(cb.c.id == callback_id).values(
                state=State.CANCELLED.value, outcome="cancelled", close_reason=reason, closed_at=now,
                claimed_by=None, lease_until=None, updated_at=now))
            conn.execute(t.callback_events.insert(), [_ev(callback_id, now, actor, "cancelled", cur.state,
                                                          State.CANCELLED, {"reason": reason})])
            after = self._one(conn, callback_id)
        self.log.info("callback.cancelled", callback_id=callback_id, actor=actor, reason=reason,
                      was=cur.state.value, number=mask(cur.number))
        return after

    def sweep(self) -> list[int]:
        """Return callbacks whose claim lease ran out to the queue."""
        with self.store.write() as conn:
            return self._sweep(conn, self.clock.now())

    # -- helpers ------------------------------------------------------------------
    def _statement(self, name: str, build: Any) -> Any:
        q = self._statements.get((name,))
        if q is None:
            q = self._statements[(name,)] = build()
        return q

    def _claim_statement(self, count: int | None) -> Any:
        """PostgreSQL: the claim as one statement (data-modifying CTEs): pick, lease, events."""
        claimed, events = self._claim_ctes(count)
        return sa.select(claimed).add_cte(events)

    def _claim_json_statement(self, count: int | None) -> Any:
        """PostgreSQL: the claim, answering with the claimed callbacks as one JSON text in the queue's order
        (the claimer holds them all: every number shown)."""
        claimed, events = self._claim_ctes(count)
        order = (claimed.c.priority.desc(), claimed.c.failures.desc(), claimed.c.triggered_at.asc(), claimed.c.id.asc())
        items = sa.func.string_agg(callback_json("claimed", sa.true()),
                                   aggregate_order_by(sa.literal_column("','"), *order))
        # the ids beside the JSON: the claim's log line names them without parsing the text
        return sa.select(items, sa.func.array_agg(claimed.c.id)).select_from(claimed).add_cte(events)

    def _claim_ctes(self, count: int | None) -> tuple[Any, Any]:
        """`count` written into the statement (else bound): with a LIMIT it knows, PostgreSQL's plan for the
        prepared statement is the same whatever the time bound, and it keeps that generic plan instead of
        planning each claim anew (a custom plan per execution: most of the claim's database CPU)."""
        ev = t.callback_events
        limit = sa.literal_column(str(int(count))) if count is not None else sa.bindparam("count")
        # the state beside the id: FOR UPDATE returns the locked row's current version, the one the UPDATE
        # changes, so the events record the state each callback was really claimed from
        pick = (sa.select(cb.c.id, cb.c.state).where(self.due_clause(_NOW)).order_by(*ORDER).limit(limit)
                .with_for_update(skip_locked=True).cte("pick"))
        claimed = (sa.update(cb).where(cb.c.id == pick.c.id)
                   .values(state=State.DIALING.value, claimed_by=sa.bindparam("operator"),
                           lease_until=sa.bindparam("until", type_=cb.c.lease_until.type), updated_at=_NOW)
                   .returning(*cb.c).cte("claimed"))
        events = ev.insert().from_select(
            ["callback_id", "at", "actor", "event", "from_state", "to_state", "detail"],
            sa.select(claimed.c.id, claimed.c.updated_at, claimed.c.claimed_by, sa.literal_column("'claimed'"),
                      pick.c.state, claimed.c.state, sa.cast(sa.bindparam("detail"), sa.Text))
            .join_from(claimed, pick, pick.c.id == claimed.c.id)
            .order_by(claimed.c.priority.desc(), claimed.c.failures.desc(), claimed.c.triggered_at, claimed.c.id)
        ).cte("claim_events")
        return claimed, events

    def _sweep_statement(self) -> Any:
        """PostgreSQL: the sweep as one statement: expired claims back to the queue, with their events."""
        ev = t.callback_events
        expired = sa.select(cb.c.id, cb.c.claimed_by).where(_lease_ran_out(_NOW)).with_for_update().cte("expired")
        swept = (sa.update(cb).where(cb.c.id == expired.c.id)
                 .values(state=_pre_claim_sql(cb), claimed_by=None, lease_until=None, updated_at=_NOW)
                 .returning(cb.c.id, cb.c.state, cb.c.updated_at, expired.c.claimed_by.label("held_by"))
                 .cte("swept"))
        events = ev.insert().from_select(
            ["callback_id", "at", "actor", "event", "from_state", "to_state", "detail"],
            sa.select(swept.c.id, swept.c.updated_at, sa.literal_column("'sweeper'"),
                      sa.literal_column("'lease-expired'"), sa.literal_column(f"'{State.DIALING.value}'"),
                      swept.c.state, sa.cast(sa.func.jsonb_build_object("claimed_by", swept.c.held_by), sa.Text))
            .order_by(swept.c.id)
        ).cte("sweep_events")
        return sa.select(swept.c.id).add_cte(events).order_by(swept.c.id)

    def _sweep(self, conn: Connection, now: datetime) -> list[int]:
        # only operators' claims: an automatic dial that outlived its lease is reconciled with
        # its dialer by the dispatcher, never simply handed out again
        if conn.dialect.name == "postgresql":
            # one statement, atomic on its own (also in autocommit); cheap when nothing ran out
            # (ix_callbacks_lease_until)
            return list(conn.execute(self._statement("sweep", self._sweep_statement), {"now": now}).scalars())
        rows = conn.execute(sa.select(cb).where(_lease_ran_out(now))).all()
        expired = [Callback.from_row(r) for r in rows]
        swept = []
        for c in expired:
            back = _pre_claim_state(c)
            n = conn.execute(sa.update(cb).where(cb.c.id == c.id, cb.c.state == State.DIALING.value,
                                                 cb.c.lease_until < now)
                             .values(state=back.value, claimed_by=None, lease_until=None, updated_at=now)).rowcount
            if n:
                swept.append(c.id)
                conn.execute(t.callback_events.insert(), [_ev(c.id, now, "sweeper", "lease-expired", State.DIALING,
                                                              back, {"claimed_by": c.claimed_by})])
        return swept

    def _one(self, conn: Connection, callback_id: int, *, lock: bool = False) -> Callback:
        """The callback as stored; `lock`: FOR UPDATE on PostgreSQL (SQLite renders no FOR UPDATE: its write
        transaction holds the database's lock already)."""
        q = sa.select(cb).where(cb.c.id == callback_id)
        row = conn.execute(q.with_for_update() if lock else q).first()
        if row is None:
            raise NotFound(f"no callback {callback_id}")
        return Callback.from_row(row)

    def _held(self, conn: Connection, callback_id: int, operator: str, force: bool) -> Callback:
        cur = self._one(conn, callback_id, lock=True)   # a concurrent sweep or close waits for this transaction
        if cur.state is not State.DIALING:
            why = f" ({cur.close_reason})" if cur.close_reason else ""
            raise InvalidTransition(f"callback {callback_id} is {cur.state.value}{why}, not claimed")
        if cur.claimed_by != operator and not force:
            raise LeaseLost(f"callback {callback_id} is claimed by {cur.claimed_by}, not {operator}")
        return cur


class _Silent:
    """A logger that drops everything: the queue's default (`CallbackQueue.log`)."""

    def _drop(self, *_: Any, **__: Any) -> None:
        return None

    info = warning = error = _drop


SILENT = _Silent()


def _log_claimed(log: Any, actor: str, ids: list[int], until: datetime, number: str | None) -> None:
    """One line per claim, whatever its count (the claim is the hot path)."""
    if not ids:
        return
    if len(ids) == 1:
        log.info("callback.claimed", callback_id=ids[0], actor=actor, lease_until=until.isoformat(),
                 **({"number": mask(number)} if number else {}))
    else:
        log.info("callback.claimed", callback_ids=ids, count=len(ids), actor=actor, lease_until=until.isoformat())


def _log_swept(log: Any, ids: list[int]) -> None:
    for cid in ids:
        log.info("callback.lease_expired", callback_id=cid, note="the claim's lease ran out: back in the queue")


def log_outcome(log: Any, c: Callback, actor: str, outcome: str, **extra: Any) -> None:
    """How a call ended, after the commit: a retry (when), or closed (the state and why); unreachable (the retry
    policy gave up) is a warning."""
    extra = {k: v for k, v in extra.items() if v}
    if c.state is State.RETRY_WAIT:
        log.info("callback.retry_scheduled", callback_id=c.id, actor=actor, outcome=outcome,
                 dial_attempts=c.dial_attempts, retry_at=c.due_at.isoformat(), **extra)
    elif c.state is State.UNREACHABLE:
        log.warning("callback.unreachable", callback_id=c.id, actor=actor, outcome=outcome,
                    dial_attempts=c.dial_attempts, reason=c.close_reason, number=mask(c.number), **extra)
    else:
        log.info("callback.closed", callback_id=c.id, actor=actor, outcome=outcome, state=c.state.value,
                 dial_attempts=c.dial_attempts, **({"reason": c.close_reason} if c.close_reason else {}), **extra)


def _pre_claim_state(c: Callback) -> State:
    """Where a claim that ended without a call (released, lease expired, a dial given back) goes back to:
    retry_wait once it has been called, else scheduled if the planner gave it a window (a planned callback
    keeps its plan), else pending. Not the state it was claimed from: claims record that as they happen."""
    if c.dial_attempts > 0:
        return State.RETRY_WAIT
    return State.SCHEDULED if c.window_start is not None else State.PENDING
