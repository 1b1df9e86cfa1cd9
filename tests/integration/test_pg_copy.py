"""PostgreSQL: batches stored by binary COPY store what the per-row upsert stores.

`Ingestor._store_rows` sends a PostgreSQL batch of `COPY_MIN` rows or more through `_copy_upsert`: COPYed
straight into attempts when none of its keys is stored yet, otherwise COPYed into a staging table and merged
by one INSERT .. SELECT .. ON CONFLICT with the upsert's merge rules (and the straight COPY, refused by the
unique index, falls back to that). Each case is compared with the executemany upsert (`COPY_MIN` out of
reach) on the same input: the same database, callbacks and all. That the COPY path really ran is told by a
spy on `ingest._copy` (its statements, and the rows that went through it) and by the statements SQLAlchemy
sent (the per-row upsert not among them).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event

import callback_queue.ingest as ingest_mod
from callback_queue.attempts import DeadLetter
from callback_queue.clock import FakeClock
from callback_queue.detection import DetectRules
from callback_queue.errors import StoreError
from callback_queue.ingest import ATTEMPTS_COPY, STAGE_COPY, STAGED_UPSERT_SQL, UPSERT_SQL, Ingestor
from callback_queue.numbers import normalizer_from
from callback_queue.store import Store
from daemon.sources.pipeline import import_file
from daemon.sources.queue_log import QueueLogParser
from tests.conftest import PG_ADMIN, shared_dir, throwaway_pg_database
from tests.integration.test_idempotency import assert_same, capture_settings, dump, import_paths

RULES = DetectRules(threshold=3, lookback_seconds=3 * 86400, min_wait_seconds=5)
NOW = datetime(2026, 3, 19, 18, 0, tzinfo=UTC)
NEVER = 10**9  # COPY_MIN out of reach: every batch through the executemany upsert


@pytest.fixture
def two_pg(pg_database: str) -> Iterator[tuple[str, str]]:
    """Two migrated, empty PostgreSQL databases: (the COPY path's, the executemany upsert's)."""
    with throwaway_pg_database("callbackd_copy") as a, throwaway_pg_database("callbackd_rows") as b:
        for url in (a, b):
            s = Store(url)
            s.upgrade()
            s.dispose()
        yield a, b


class Spy:
    """What went through `ingest._copy` (statement, rows) and the statements SQLAlchemy sent."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.copies: list[tuple[str, int]] = []
        self.statements: list[tuple[str, bool]] = []  # (statement, executemany)
        real = ingest_mod._copy

        def copy(conn: Any, statement: str, rows: Any) -> None:
            self.copies.append((statement, len(rows)))
            real(conn, statement, rows)

        monkeypatch.setattr(ingest_mod, "_copy", copy)

    def listen(self, store: Store) -> None:
        @event.listens_for(store.engine, "before_cursor_execute")
        def _log(_conn, _cur, statement, _params, _ctx, executemany):  # type: ignore[no-untyped-def]
            self.statements.append((statement, executemany))

    def take(self) -> tuple[list[tuple[str, int]], list[tuple[str, bool]]]:
        out = (self.copies[:], self.statements[:])
        self.copies.clear()
        self.statements.clear()
        return out


def upserts(statements: list[tuple[str, bool]]) -> tuple[int, int]:
    """(per-row upserts sent, staged upserts sent)."""
    rows = sum(1 for s, _ in statements if s == UPSERT_SQL["pyformat"])
    staged = sum(1 for s, _ in statements if s == STAGED_UPSERT_SQL)
    return rows, staged


def outcomes(url: str) -> set[str | None]:
    eng = sa.create_engine(url)
    try:
        with eng.connect() as c:
            return set(c.exec_driver_sql("SELECT outcome FROM callbacks").scalars())
    finally:
        eng.dispose()


def attempts_by_id(url: str) -> list[tuple[Any, ...]]:
    eng = sa.create_engine(url)
    try:
        with eng.connect() as c:
            return [tuple(r) for r in c.exec_driver_sql("SELECT * FROM attempts ORDER BY id")]
    finally:
        eng.dispose()


# -- batches made to merge: CDR, then queue_log re-classifying it, then both again ----------------------------

T0 = int(NOW.timestamp()) - 15 * 3600  # the last of 800 calls a minute apart: before NOW


def _ql(i: int, system: str = "pbx") -> tuple[Any, ...]:
    """A queue_log attempt: number i % 40, every third one connected."""
    ok = i % 3 == 0
    return (system, f"{T0 + 60 * i}.{i}", f"138001380{i % 40:02d}", f"+86138001380{i % 40:02d}", T0 + 60 * i,
            T0 + 60 * i + 30, "connected" if ok else "failed", "connect" if ok else "abandon", 30 if not ok else None,
            "hotline", "queue_log", 2)


def _cdr(q: tuple[Any, ...]) -> tuple[Any, ...]:
    """The same call as the CDR saw it: rank 1, failed (no-answer), another start, end, wait, no queue."""
    return (*q[:4], q[4] - 2, q[5] + 3, "failed", "no-answer", 40, None, "cdr", 1)


def batches() -> list[tuple[str, list[tuple[Any, ...]]]]:
    ql = [_ql(i) for i in range(600)]
    # a caller field and a queue name longer than their columns: cut to fit (`_fit`), on both paths
    ql[7] = (*ql[7][:2], "x" * 120, *ql[7][3:9], "q" * 100, *ql[7][10:])
    other = [_ql(i, "pbx2") for i in range(0, 600, 5)]  # a second system in the same batches
    return [
        ("cdr first", [_cdr(q) for q in ql[100:400]]),                  # new keys: COPY straight in
        ("queue_log outranks", ql + other),                            # 300 keys stored: staged merge
        ("queue_log again", ql[::-1] + other),                          # every key stored
        ("cdr again", [_cdr(q) for q in ql[:500:2]]),                   # lower rank: changes nothing
        ("new calls and a late cdr", [_ql(i) for i in range(600, 800)] + [_cdr(ql[599])]),
        ("a few rows", [_cdr(q) for q in ql[590:600]]),                 # under COPY_MIN: executemany
    ]


def test_copy_batches_store_what_the_row_upserts_store(two_pg: tuple[str, str], monkeypatch: pytest.MonkeyPatch):
    copy_url, rows_url = two_pg
    spy = Spy(monkeypatch)
    plan = batches()
    assert all(len(rows) >= ingest_mod.COPY_MIN for _, rows in plan[:-1]) and len(plan[-1][1]) < ingest_mod.COPY_MIN
    seen: dict[str, list[tuple[list[tuple[str, int]], list[tuple[str, bool]]]]] = {}
    for url, copy_min in ((copy_url, ingest_mod.COPY_MIN), (rows_url, NEVER)):
        monkeypatch.setattr(ingest_mod, "COPY_MIN", copy_min)
        store = Store(url)
        spy.listen(store)
        try:
            ing = Ingestor(store, FakeClock(NOW), RULES)
            for _, rows in plan:
                ing.ingest_rows(rows)
                seen.setdefault(url, []).append(spy.take())
        finally:
            store.dispose()

    got, want = dump(copy_url), dump(rows_url)
    assert_same(got, want)
    # ids and all: the COPYed rows take their ids in the batch's order, as the upserts do
    assert attempts_by_id(copy_url) == attempts_by_id(rows_url)
    # not vacuous: the merges happened (queue_log won, callbacks the CDR opened were re-classified away)
    by_key = {(r[0], r[1]): r for r in got["attempts"]}
    assert len(by_key) == 600 + 120 + 200
    assert by_key[("pbx", _ql(150)[1])][6] == "connected" and by_key[("pbx", _ql(150)[1])][10] == "queue_log"
    assert {r[10] for r in got["attempts"]} == {"queue_log"}  # every CDR key was also in queue_log
    assert max(len(r[3] or "") for r in got["attempts"]) == 80
    assert "reclassified" in outcomes(copy_url)

    copy_path = [(copies, upserts(statements)) for copies, statements in seen[copy_url]]
    assert copy_path == [
        ([(ATTEMPTS_COPY, 300)], (0, 0)),                         # fresh: straight in
        ([(STAGE_COPY, 720)], (0, 1)),                            # stored keys: one staged merge
        ([(STAGE_COPY, 720)], (0, 1)),
        ([(STAGE_COPY, 250)], (0, 1)),
        ([(STAGE_COPY, 201)], (0, 1)),                            # one late CDR record of a stored call
        ([], (1, 0)),                                             # a few rows: the executemany upsert
    ]
    assert all(copies == [] and upserts(statements) == (1, 0) for copies, statements in seen[rows_url])


def test_a_copy_the_unique_index_refuses_falls_back_to_the_merge(two_pg: tuple[str, str],
                                                                  monkeypatch: pytest.MonkeyPatch):
    """The range check may miss a stored key (another writer stored it meanwhile, or the database's collation
    orders call ids otherwise): the straight COPY is refused by the unique index, rolled back to its savepoint,
    and the batch is merged like any other; the transaction (and what else it wrote) goes on."""
    copy_url, rows_url = two_pg
    spy = Spy(monkeypatch)
    ql = [_ql(i) for i in range(400)]
    for url, copy_min in ((copy_url, ingest_mod.COPY_MIN), (rows_url, NEVER)):
        monkeypatch.setattr(ingest_mod, "COPY_MIN", copy_min)
        store = Store(url)
        spy.listen(store)
        try:
            ing = Ingestor(store, FakeClock(NOW), RULES)
            ing.ingest_rows([_cdr(q) for q in ql[:300]])
            with monkeypatch.context() as m:
                m.setattr(ingest_mod, "_any_stored", lambda conn, rows: False)  # the check misses them all
                spy.take()
                ing.ingest_rows(ql, [DeadLetter("queue_log:pbx", "queue_log:7", b"junk", "not a line")])
                copies, statements = spy.take()
        finally:
            store.dispose()
        if url == copy_url:
            assert copies == [(ATTEMPTS_COPY, 400), (STAGE_COPY, 400)]
            assert upserts(statements) == (0, 1)
            assert [s for s, _ in statements if "SAVEPOINT" in s][-1].startswith("ROLLBACK TO SAVEPOINT")
    got = dump(copy_url)
    assert_same(got, dump(rows_url))
    assert len(got["attempts"]) == 400 and len(got["dead_letters"]) == 1
    assert {r[10] for r in got["attempts"]} == {"queue_log"}


def test_the_captures_merge_alike_through_copy(two_pg: tuple[str, str], captures: Path,
                                               monkeypatch: pytest.MonkeyPatch):
    """The real captures (queue_log and Master.csv: the same calls, queue_log the authority) through the
    daemon's parsers in both orders and again, every batch COPYed (COPY_MIN 1) or upserted row by row."""
    copy_url, rows_url = two_pg
    spy = Spy(monkeypatch)
    s = capture_settings(captures)
    ql, cdr = captures / "queue_log", captures / "Master.csv"
    for url, copy_min in ((copy_url, 1), (rows_url, NEVER)):
        monkeypatch.setattr(ingest_mod, "COPY_MIN", copy_min)
        store = Store(url)
        try:
            import_paths(store, s, cdr, ql)      # CDR first: queue_log re-classifies
            import_paths(store, s, ql, cdr)      # again, the other way round
        finally:
            store.dispose()
        copies, _ = spy.take()
        assert (len(copies) == 4 and {st for st, _ in copies} == {ATTEMPTS_COPY, STAGE_COPY}) == (url == copy_url)
    got = dump(copy_url)
    assert_same(got, dump(rows_url))
    assert len(got["attempts"]) == 18 and len(got["callbacks"]) == 2


@pytest.fixture(scope="module")
def hotline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """19 days of the 1,100-calls/day hotline (~21,000 attempts) and two lines of garbage."""
    path = tmp_path_factory.mktemp("copy") / "hotline.queue_log"
    subprocess.run([sys.executable, str(shared_dir() / "bench" / "gen_queue_log.py"), "--preset", "hotline",
                    "--days", "19", "--start", "2026-03-01", "--seed", "7", "-o", str(path)], check=True,
                   capture_output=True)
    with path.open("ab") as f:
        f.write(b"not a queue_log line\n1773000000|x.1|q|NONE|ABANDON|one|1|5\n")
    return path


@pytest.mark.parametrize("workers", [0, 1])
def test_an_import_through_copy_equals_the_row_upserts_and_again(hotline: Path, two_pg: tuple[str, str],
                                                                  workers: int, monkeypatch: pytest.MonkeyPatch):
    """`callbackd import` on PostgreSQL: its batches COPYed straight in; imported again, every one merged."""
    copy_url, rows_url = two_pg
    spy = Spy(monkeypatch)
    results = {}
    for url, copy_min in ((copy_url, ingest_mod.COPY_MIN), (rows_url, NEVER)):
        monkeypatch.setattr(ingest_mod, "COPY_MIN", copy_min)
        store = Store(url)
        try:
            ing = Ingestor(store, FakeClock(NOW), RULES)
            p = QueueLogParser(source="queue_log:pbx", system="pbx", normalizer=normalizer_from("CN", 5, [], []))
            first = import_file(hotline, p, ing, chunk_bytes=1 << 20, workers=workers)
            results[url, "first"] = (dump(url), spy.take()[0])
            again = import_file(hotline, p, ing, chunk_bytes=1 << 20, workers=workers)
            results[url, "again"] = (dump(url), spy.take()[0])
        finally:
            store.dispose()
        assert first.attempts > 20_000 and first.opened > 0 and again.opened == again.cancelled == 0
    for when in ("first", "again"):
        assert_same(results[copy_url, when][0], results[rows_url, when][0])
        assert results[rows_url, when][1] == []
    assert results[copy_url, "first"][0] == results[copy_url, "again"][0]
    first_copies, again_copies = results[copy_url, "first"][1], results[copy_url, "again"][1]
    assert len(first_copies) > 3 and {st for st, _ in first_copies} == {ATTEMPTS_COPY}
    assert {st for st, _ in again_copies} == {STAGE_COPY}
    assert sum(n for _, n in first_copies) == sum(n for _, n in again_copies) == first.attempts


def test_a_connection_lost_during_the_copy_is_a_store_outage(two_pg: tuple[str, str]):
    """COPY goes through the driver's connection, not SQLAlchemy's statements: a connection lost in it still
    comes out as a retryable StoreError, the transaction is gone whole, and the next batch reconnects."""
    url, _ = two_pg
    store = Store(url)
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    killed: list[int] = []

    @event.listens_for(store.engine, "after_cursor_execute")
    def _kill(conn, _cur, statement, *_):  # type: ignore[no-untyped-def]
        # right before the COPY: its savepoint has just been taken on this connection
        if statement.startswith("SAVEPOINT") and not killed:
            pid = conn.connection.driver_connection.info.backend_pid
            with admin.connect() as c:
                c.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            killed.append(pid)

    try:
        ing = Ingestor(store, FakeClock(NOW), RULES)
        rows = [_ql(i) for i in range(200)]
        with pytest.raises(StoreError) as lost:
            ing.ingest_rows(rows)
        assert killed and lost.value.__cause__.statement == ATTEMPTS_COPY  # (not SQLAlchemy's own statements)
        with store.read() as c:
            assert c.exec_driver_sql("SELECT count(*) FROM attempts").scalar() == 0
        assert ing.ingest_rows(rows).attempts == 200
        with store.read() as c:
            assert c.exec_driver_sql("SELECT count(*) FROM attempts").scalar() == 200
            assert c.connection.driver_connection.info.backend_pid != killed[0]
    finally:
        store.dispose()
        admin.dispose()

