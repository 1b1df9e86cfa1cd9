"""Read a callbackd database back and compare it with the reference model.

Plain SQL over the tables, so a check does not trust the repositories it checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from .model import Expected

OPEN = ("pending", "scheduled", "dialing", "retry_wait")
#: how the daemon closes a callback it retracts (see model_mismatches)
RETRACTED = ("reclassified", "self-resolved")
#: states nobody should find once the daemon has stopped cleanly: work in flight
TRANSIENT = ("dialing",)


@dataclass(frozen=True, slots=True)
class DbCallback:
    id: int
    kind: str
    number: str
    state: str
    outcome: str | None
    failures: int
    episode_start_ts: int
    claimed_by: str | None
    lease_until: datetime | None
    dial_attempts: int = 0


def _ts(v: datetime | str) -> int:
    if isinstance(v, str):
        v = datetime.fromisoformat(v)
    if v.tzinfo is None:
        v = v.replace(tzinfo=UTC)
    return int(v.timestamp())


def read_callbacks(url: str) -> list[DbCallback]:
    eng = sa.create_engine(url)
    try:
        with eng.connect() as c:
            rows = c.execute(sa.text(
                "SELECT id, kind, number, state, outcome, failures, episode_start, claimed_by, lease_until, "
                "dial_attempts FROM callbacks ORDER BY id")).all()
    finally:
        eng.dispose()
    return [DbCallback(r.id, r.kind, r.number, r.state, r.outcome, r.failures, _ts(r.episode_start),
                       r.claimed_by, r.lease_until, r.dial_attempts) for r in rows]


def read_attempt_ids(url: str) -> dict[str, tuple[str, str | None]]:
    """call_id -> (outcome, number) of every stored attempt."""
    eng = sa.create_engine(url)
    try:
        with eng.connect() as c:
            rows = c.execute(sa.text("SELECT call_id, outcome, number FROM attempts")).all()
    finally:
        eng.dispose()
    return {r.call_id: (r.outcome, r.number) for r in rows}


def scalar(url: str, sql: str) -> object:
    eng = sa.create_engine(url)
    try:
        with eng.connect() as c:
            return c.execute(sa.text(sql)).scalar()
    finally:
        eng.dispose()


def model_mismatches(exp: Expected, callbacks: list[DbCallback], *, owed_states: tuple[str, ...] = OPEN,
                     check_failures: bool = True) -> list[str]:
    """Every way the database differs from the model (empty when it holds).

    owed_states: the states a callback the model says is owed may be in (open ones unless
    the test lets the planner or the SMS fallback move it on).
    """
    problems: list[str] = []
    recalls = [c for c in callbacks if c.kind == "recall"]
    by_key: dict[tuple[str, int], list[DbCallback]] = {}
    for c in recalls:
        by_key.setdefault((c.number, c.episode_start_ts), []).append(c)
    want = exp.by_key()
    for key, e in want.items():
        got = by_key.get(key, [])
        if len(got) != 1:
            problems.append(f"{key}: {len(got)} callbacks, model wants 1 ({e})")
            continue
        [c] = got
        if e.cancelled_by is not None:
            if (c.state, c.outcome) != ("cancelled", "self-resolved"):
                problems.append(f"{key}: state {c.state}/{c.outcome}, model wants self-resolved by {e.cancelled_by}")
        elif c.state not in owed_states or c.outcome == "self-resolved":
            problems.append(f"{key}: state {c.state}/{c.outcome}, model wants it owed ({owed_states})")
        if check_failures and c.failures != e.failures and not (
                e.cancelled_by is not None and exp.threshold <= c.failures < e.failures):
            # (a closed episode may miss a failure that started before the connect but was logged
            # after it: the daemon's closed-callback boundary; see the note in tests/crash/test_model.py)
            problems.append(f"{key}: failures {c.failures}, model wants {e.failures}")
    for key, got in by_key.items():
        if key in want:
            continue
        # A callback the model does not have is tolerated only as a retraction: opened on what had
        # arrived, then cancelled before anyone worked it when an earlier-started call arrived later
        # (overlapping calls are logged in order of their end). Open or worked, it is a fault.
        bad = [c for c in got if c.state != "cancelled" or c.dial_attempts or c.outcome not in RETRACTED]
        if bad:
            problems.append(f"{key}: callback(s) {[(c.id, c.state, c.outcome, c.failures) for c in bad]} "
                            "the model does not have")
    open_numbers: dict[str, int] = {}
    for c in recalls:
        if c.state in OPEN:
            open_numbers[c.number] = open_numbers.get(c.number, 0) + 1
    problems += [f"{n}: {k} open callbacks" for n, k in open_numbers.items() if k > 1]
    return problems
