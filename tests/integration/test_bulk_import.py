"""The backfill's fast paths store what the plain path stores.

`import_file` goes through `Ingestor.bulk` (on SQLite one transaction that rebuilds the attempts
indexes at its end and detects once), a plain INSERT for keys the batch checked are new, and
optionally a forked parse worker. Each is compared with the slow, obvious path: lines fed one by one
to `QueueLogParser.feed`, stored as small `Ingestor.ingest` batches.
"""

from __future__ import annotations

import gc
import multiprocessing
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

import callback_queue.ingest as ingest_mod
from callback_queue.attempts import Attempt, DeadLetter, Origin, Outcome
from callback_queue.clock import FakeClock
from callback_queue.detection import DetectRules
from callback_queue.ingest import TIME_INDEX, BulkLoad, Ingestor, plain_row
from callback_queue.numbers import normalizer_from
from callback_queue.store import Store
from daemon.sources.pipeline import ParseWorkerError, import_file, read_blocks
from daemon.sources.queue_log import QueueLogParser
from tests.conftest import shared_dir
from tests.integration.test_idempotency import assert_same, dump
from tests.support.dbcheck import model_mismatches, read_attempt_ids, read_callbacks
from tests.support.model import expected, read_gen_queue_log

RULES = DetectRules(threshold=3, lookback_seconds=3 * 86400, min_wait_seconds=5)
START = "2026-03-01"
NOW = datetime(2026, 3, 19, 18, 0, tzinfo=UTC)  # the last day of 19: its streaks are inside the window


@pytest.fixture(scope="module")
def year_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """19 days of the 1,100-calls/day hotline: ~21,000 attempts, over the bulk path's 20,000."""
    path = tmp_path_factory.mktemp("bulk") / "hotline.queue_log"
    subprocess.run([sys.executable, str(shared_dir() / "bench" / "gen_queue_log.py"), "--preset", "hotline",
                    "--days", "19", "--start", START, "--seed", "7", "-o", str(path)], check=True,
                   capture_output=True)
    with path.open("ab") as f:  # garbage goes to dead letters on every path
        f.write(b"not a queue_log line\n1773000000|x.1|q|NONE|ABANDON|one|1|5\n")
    return path


def parser() -> QueueLogParser:
    return QueueLogParser(source="queue_log:pbx", system="pbx", normalizer=normalizer_from("CN", 5, [], []))


def slow_import(url: str, path: Path) -> None:
    """The reference: feed() line by line, ingest() in batches of 2,000 lines."""
    store = Store(url)
    try:
        ing, p = Ingestor(store, FakeClock(NOW), RULES), parser()
        lines = path.read_bytes().split(b"\n")[:-1]
        offsets = [0]
        for ln in lines:
            offsets.append(offsets[-1] + len(ln) + 1)
        for i in range(0, len(lines), 2000):
            attempts: list[Attempt] = []
            dead: list[DeadLetter] = []
            for j in range(i, min(i + 2000, len(lines))):
                r = p.feed(lines[j], f"{path}:{offsets[j]}")
                if isinstance(r, Attempt):
                    attempts.append(r)
                elif r is not None:
                    dead.append(r)
            ing.ingest(attempts, dead)
    finally:
        store.dispose()


def sqlite_url(tmp_path: Path, name: str) -> str:
    url = f"sqlite:///{tmp_path / name}"
    s = Store(url)
    s.upgrade()
    s.dispose()
    return url


def attempts_indexes(store: Store) -> list[tuple[str, str]]:
    with store.read() as c:
        return [tuple(r) for r in c.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'attempts' ORDER BY name")]


@pytest.mark.parametrize("workers", [0, 1])
def test_import_equals_the_model_on_both_backends(year_slice: Path, store_url: str, workers: int):
    store = Store(store_url)
    try:
        stats = import_file(year_slice, parser(), Ingestor(store, FakeClock(NOW), RULES), chunk_bytes=1 << 20,
                            workers=workers)
    finally:
        store.dispose()
    written = read_gen_queue_log(year_slice.read_text().splitlines()[:-2], "pbx")
    assert stats.attempts == len(written) > 20_000 and stats.dead_letters == 2
    assert read_attempt_ids(store_url) == {a.call_id: (a.outcome.value, a.number) for a in written}
    exp = expected(written, RULES, int(NOW.timestamp()))
    assert len(exp.owed) >= 5 and len(exp.cancelled) >= 5, "traffic too thin to prove anything"
    assert model_mismatches(exp, read_callbacks(store_url)) == []


@pytest.mark.parametrize("workers", [0, 1])
def test_bulk_import_equals_the_slow_path_and_reimport_changes_nothing(year_slice: Path, tmp_path: Path,
                                                                         workers: int, monkeypatch: pytest.MonkeyPatch):
    bulk_commits: list[int] = []
    commit = ingest_mod.BulkLoad._commit

    def counted(self: ingest_mod.BulkLoad) -> None:
        bulk_commits.append(self._rows)
        commit(self)

    monkeypatch.setattr(ingest_mod.BulkLoad, "_commit", counted)
    want_url, got_url = sqlite_url(tmp_path, "want.db"), sqlite_url(tmp_path, "got.db")
    slow_import(want_url, year_slice)
    store = Store(got_url)
    try:
        before = attempts_indexes(store)
        assert any("number" in sql for _, sql in before if sql)
        ing = Ingestor(store, FakeClock(NOW), RULES)
        first = import_file(year_slice, parser(), ing, chunk_bytes=1 << 20, workers=workers)
        assert first.opened > 0
        assert bulk_commits == [first.attempts], "the import did not take the bulk path"
        assert attempts_indexes(store) == before      # dropped and built again, the same
        assert_same(dump(got_url), dump(want_url))
        _pool_caches_are_small(store)
        again = import_file(year_slice, parser(), ing, chunk_bytes=1 << 20, workers=workers)
        assert (again.attempts, again.opened, again.cancelled) == (first.attempts, 0, 0)
        assert_same(dump(got_url), dump(want_url))
    finally:
        store.dispose()


def test_a_failed_bulk_transaction_rolls_back_rows_and_index_drops(year_slice: Path, tmp_path: Path):
    store = Store(sqlite_url(tmp_path, "b.db"))
    try:
        before = attempts_indexes(store)
        rows, _ = parser().feed_rows(next(read_blocks(year_slice))[0])
        ing = Ingestor(store, FakeClock(NOW), RULES)
        with pytest.raises(RuntimeError, match="boom"), ing.bulk() as bulk:
            bulk.add(rows, more=100_000)
            with store.read() as c:   # another connection keeps its snapshot: indexes there, no rows
                assert c.exec_driver_sql("SELECT count(*) FROM attempts").scalar() == 0
            assert bulk._conn is not None and bulk._indexes, "the bulk path was not taken"
            assert bulk._conn.exec_driver_sql("PRAGMA cache_size").scalar() == -65536
            raise RuntimeError("boom")
        assert attempts_indexes(store) == before
        _pool_caches_are_small(store)
        with store.read() as c:
            assert c.exec_driver_sql("SELECT count(*) FROM attempts").scalar() == 0
    finally:
        store.dispose()


def _pool_caches_are_small(store: Store) -> None:
    """The backfill's big page cache is given back: pooled connections live as long as the daemon."""
    from callback_queue.store import SQLITE_CACHE_KIB

    with store.read() as c:
        assert c.exec_driver_sql("PRAGMA cache_size").scalar() == SQLITE_CACHE_KIB == -4096
        assert c.exec_driver_sql("PRAGMA threads").scalar() == 0  # the index builds' sort helpers


def test_a_worker_import_equals_an_in_process_import_row_for_row(year_slice: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch):
    """The parse worker's path (rows marshal'ed over, the time index kept through the load, no cyclic GC
    while the rows stream) stores what parsing and storing in one process stores: the same attempts,
    ids and all, in the same order; the same dead letters and callbacks."""
    kept: list[bool] = []
    begin = BulkLoad._begin

    def recorded(self: BulkLoad, expected: int) -> bool:
        kept.append(self.keep_time_index)
        return begin(self, expected)

    monkeypatch.setattr(BulkLoad, "_begin", recorded)
    got = []
    for workers in (0, 1):
        url = sqlite_url(tmp_path, f"workers{workers}.db")
        store = Store(url)
        try:
            before = attempts_indexes(store)
            stats = import_file(year_slice, parser(), Ingestor(store, FakeClock(NOW), RULES), chunk_bytes=1 << 20,
                                workers=workers)
            assert attempts_indexes(store) == before
            with store.read() as c:
                attempts = [tuple(r) for r in c.exec_driver_sql("SELECT * FROM attempts ORDER BY id")]
                dead = [tuple(r) for r in c.exec_driver_sql("SELECT * FROM dead_letters ORDER BY id")]
        finally:
            store.dispose()
        got.append((stats, attempts, dead, dump(url)))
    assert kept == [False, True]
    assert len(got[0][1]) == got[0][0].attempts > 20_000 and len(got[0][2]) == 2
    assert got[1][:3] == got[0][:3]
    assert_same(got[1][3], got[0][3])


@pytest.mark.parametrize("keep", [False, True])
def test_a_bulk_load_may_keep_the_time_index(year_slice: Path, tmp_path: Path, keep: bool):
    store = Store(sqlite_url(tmp_path, "k.db"))
    try:
        before = attempts_indexes(store)
        assert TIME_INDEX in {name for name, _ in before}
        rows, _ = parser().feed_rows(next(read_blocks(year_slice))[0])
        with BulkLoad(Ingestor(store, FakeClock(NOW), RULES), keep_time_index=keep) as bulk:
            bulk.add(rows, more=100_000)
            assert bulk._conn is not None, "the bulk path was not taken"
            during = {name for (name,) in bulk._conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'attempts' AND sql IS NOT NULL")}
            assert during == ({TIME_INDEX} if keep else set())
        assert attempts_indexes(store) == before
        _pool_caches_are_small(store)
        with store.read() as c:  # the index kept through the load answers like a built one
            assert c.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
            assert c.exec_driver_sql(f"SELECT count(*) FROM attempts INDEXED BY {TIME_INDEX} WHERE started_ts > 0"
                                     ).scalar() == len(rows)
    finally:
        store.dispose()


def test_an_import_gives_the_garbage_collector_back(year_slice: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch):
    """The worker path pauses cyclic GC here while the rows stream in; it is as it was after the import,
    also when storing a batch fails (and the worker is gone then, too)."""
    store = Store(sqlite_url(tmp_path, "gc.db"))
    try:
        ing = Ingestor(store, FakeClock(NOW), RULES)
        assert gc.isenabled()
        import_file(year_slice, parser(), ing, chunk_bytes=1 << 20, workers=1)
        assert gc.isenabled()
        gc.disable()
        try:
            import_file(year_slice, parser(), ing, chunk_bytes=1 << 20, workers=1)
            assert not gc.isenabled()
        finally:
            gc.enable()

        def fail(self: BulkLoad, rows: object, dead: object = (), *, more: int = 0) -> None:
            assert not gc.isenabled()
            raise RuntimeError("the store broke")

        monkeypatch.setattr(BulkLoad, "add", fail)
        with pytest.raises(RuntimeError, match="the store broke"):
            import_file(year_slice, parser(), ing, chunk_bytes=1 << 20, workers=1)
        assert gc.isenabled()
        assert multiprocessing.active_children() == []
    finally:
        store.dispose()


def _cdr_row(a: tuple) -> tuple:
    # the same call as the CDR saw it: rank 1, another wait and reason, the caller's number
    return (a[0], a[1], a[2], a[3], a[4] + 1, a[5] + 2, "failed", "no-answer", 99, None, Origin.CDR.value, 1)


def test_fresh_key_insert_merges_like_the_upsert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A large batch whose keys partly exist (CDR first, then queue_log): the new ones are INSERTed,
    the rest go through the merge rules, exactly as if every row had been upserted."""
    t0 = int(NOW.timestamp()) - 3600
    rows = [("pbx", f"{t0 + 7 * i}.{i}", f"138001380{i % 50:02d}", f"+86138001380{i % 50:02d}", t0 + 7 * i,
             t0 + 7 * i + 30, "connected" if i % 3 == 0 else "failed", "connect" if i % 3 == 0 else "abandon",
             30, "hotline", "queue_log", 2) for i in range(600)]
    assert len(rows) >= ingest_mod.FRESH_MIN
    cdr = [_cdr_row(r) for r in rows[100:400:2]] + [
        ("pbx", f"{t0 - 5}.9{i}", "13800138099", "+8613800138099", t0 - 5, t0, "failed", "busy", 5, None, "cdr", 1)
        for i in range(3)]  # keys inside the batch's range that the batch does not have
    dumps = []
    for name, fresh_min in (("fast.db", ingest_mod.FRESH_MIN), ("upsert.db", 10**9)):
        monkeypatch.setattr(ingest_mod, "FRESH_MIN", fresh_min)
        url = sqlite_url(tmp_path, name)
        store = Store(url)
        try:
            ing = Ingestor(store, FakeClock(NOW), RULES)
            ing.ingest_rows(cdr)
            ing.ingest_rows(rows)
            ing.ingest([Attempt(*r[:6], Outcome(r[6]), *r[7:10], Origin(r[10])) for r in rows[:300]])  # again
        finally:
            store.dispose()
        dumps.append(dump(url))
    assert_same(dumps[0], dumps[1])
    merged = {r[1]: r for r in dumps[0]["attempts"]}
    assert len(merged) == 603
    assert all(plain_row(Attempt(*r[:6], Outcome(r[6]), *r[7:10], Origin(r[10]))) == r for r in rows)


def test_the_parse_worker_hands_back_the_visits_still_in_the_queue(tmp_path: Path):
    """A visit that enters at the end of one file and ends in the next keeps its caller."""
    first, second = tmp_path / "queue_log.1", tmp_path / "queue_log"
    t = int(NOW.timestamp()) - 600
    first.write_text(f"{t}|{t}.1|hotline|NONE|ENTERQUEUE||13812345678|1\n")
    second.write_text(f"{t + 40}|{t}.1|hotline|NONE|ABANDON|1|1|40\n")
    url = sqlite_url(tmp_path, "w.db")
    store = Store(url)
    try:
        p = parser()
        ing = Ingestor(store, FakeClock(NOW), RULES)
        import_file(first, p, ing, workers=1)
        assert list(p.pending) == [f"{t}.1"]
        import_file(second, p, ing, workers=1)
        assert p.pending == {}
    finally:
        store.dispose()
    assert read_attempt_ids(url) == {f"{t}.1": ("failed", "+8613812345678")}
    eng = sa.create_engine(url)
    with eng.connect() as c:
        assert c.exec_driver_sql("SELECT started_ts, wait_seconds FROM attempts").one() == (t, 40)
    eng.dispose()


def test_a_key_range_crowded_with_other_calls_is_simply_upserted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Call ids that do not follow time (Twilio's CallSids) make a batch's key range most of the table:
    the existence check stops at its bound and the batch goes through the upsert, merges and all."""
    t0 = int(NOW.timestamp()) - 7200
    def row(cid: str, i: int, origin: str = "queue_log", rank: int = 2) -> tuple:
        return ("tw", cid, None, f"+86138001{i % 900:05d}", t0 + i, t0 + i + 20, "failed", "abandon", 20, None,
                origin, rank)

    others = [row(f"CA{i:06x}0", i, "cdr", 1) for i in range(0, 4000)]
    batch = [row(f"CA{i:06x}{'0' if i % 10 == 0 else '5'}", i) for i in range(0, 4000, 7)]  # 1 in 10 exists
    dumps = []
    for name in ("crowded.db", "upsert.db"):
        url = sqlite_url(tmp_path, name)
        store = Store(url)
        try:
            ing = Ingestor(store, FakeClock(NOW), RULES)
            ing.ingest_rows(others)
            if name == "crowded.db":
                # the plain INSERT must not be used: the check found more keys than its bound
                monkeypatch.setattr(ingest_mod, "INSERT_SQL", "INSERT INTO no_such_table VALUES (1)")
            else:
                monkeypatch.setattr(ingest_mod, "FRESH_MIN", 10**9)
            ing.ingest_rows(batch)
        finally:
            monkeypatch.undo()
            store.dispose()
        dumps.append(dump(url))
    assert_same(dumps[0], dumps[1])
    fresh = sum(1 for i in range(0, 4000, 7) if i % 10)
    assert 0 < fresh < len(batch)
    stored = {r[1]: r for r in dumps[0]["attempts"]}
    assert len(stored) == 4000 + fresh
    assert {stored[r[1]][-2] for r in batch} == {"queue_log"}  # the batch's rank-2 rows won the merges


def test_a_failing_parse_worker_fails_the_import(tmp_path: Path):
    class Broken(QueueLogParser):
        def feed_rows(self, lines):  # type: ignore[no-untyped-def]
            raise ValueError("the parser broke")

    path = tmp_path / "queue_log"
    path.write_text("1700000000|u.1|q|NONE|ENTERQUEUE||13812345678|1\n1700000009|u.1|q|NONE|ABANDON|1|1|9\n")
    url = sqlite_url(tmp_path, "f.db")
    store = Store(url)
    try:
        broken = Broken(source="queue_log:pbx", system="pbx", normalizer=normalizer_from("CN", 5, [], []))
        with pytest.raises(ParseWorkerError, match="ValueError: the parser broke"):
            import_file(path, broken, Ingestor(store, FakeClock(NOW), RULES), workers=1)
    finally:
        store.dispose()
    assert read_attempt_ids(url) == {}
