"""Re-reading input changes nothing (DESIGN invariants 1 and 7), on SQLite and PostgreSQL.

The database is compared as a normalized dump of every table: all columns but surrogate ids and the
wall-clock created_at/updated_at, with references to callbacks and attempts replaced by their natural
keys ((number, episode_start) and (system, call_id)), rows sorted.
"""

from __future__ import annotations

import gzip
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from callback_queue.clock import FakeClock
from callback_queue.ingest import Ingestor
from callback_queue.store import Store
from daemon.app import cdr_parser, detect_rules, normalizer, queue_log_parser
from daemon.settings import Settings
from daemon.sources.pipeline import import_file

WALL_CLOCK = frozenset({"created_at", "updated_at"})
#: just after the capture (its last line is at 09:43:52 UTC): two callbacks open (min_wait 0)
AFTER_CAPTURE = datetime(2026, 11, 27, 9, 44, tzinfo=UTC)


def dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every table (found in the database, so a new one is covered too), normalized."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            insp = sa.inspect(c)
            keys: dict[str, dict[Any, tuple[Any, ...]]] = {
                "callbacks": {r[0]: ("callback", r[1], str(r[2])) for r in c.execute(
                    sa.text("SELECT id, number, episode_start FROM callbacks"))},
                "attempts": {r[0]: ("attempt", r[1], r[2]) for r in c.execute(
                    sa.text("SELECT id, system, call_id FROM attempts"))},
            }
            out: dict[str, list[tuple[Any, ...]]] = {}
            for name in sorted(insp.get_table_names()):
                refs = {fk["constrained_columns"][0]: fk["referred_table"] for fk in insp.get_foreign_keys(name)}
                cols = [col["name"] for col in insp.get_columns(name)
                        if col["name"] not in WALL_CLOCK and col["name"] != "id"]
                rows = []
                for r in c.execute(sa.select(*[sa.column(n) for n in cols]).select_from(sa.table(name))):
                    rows.append(tuple(
                        keys[refs[n]][v] if n in refs and refs[n] in keys else _plain(v) for n, v in zip(cols, r)))
                out[name] = sorted(rows, key=repr)
            return out
    finally:
        engine.dispose()


def _plain(v: Any) -> Any:
    return bytes(v) if isinstance(v, memoryview | bytearray) else v


def assert_same(got: dict[str, list[tuple[Any, ...]]], want: dict[str, list[tuple[Any, ...]]]) -> None:
    assert got.keys() == want.keys()
    for table in want:
        if got[table] != want[table]:
            extra = Counter(map(repr, got[table])) - Counter(map(repr, want[table]))
            lost = Counter(map(repr, want[table])) - Counter(map(repr, got[table]))
            raise AssertionError(f"table {table}: {len(got[table])} rows, expected {len(want[table])}; "
                                 f"extra {list(extra)[:3]}, missing {list(lost)[:3]}")


# -- import twice, and the same content under another path ------------------------------------------------

def capture_settings(captures: Path) -> Settings:
    return Settings.model_validate({
        "daemon": {"timezone": "UTC"},
        "detect": {"threshold": 3, "min_wait_seconds": 0, "default_region": "US", "internal_max_digits": 5},
        "sources": {
            "queue_log": {"path": str(captures / "queue_log")},
            "cdr": {"path": str(captures / "Master.csv"), "timezone": "UTC", "inbound_contexts": ["hotline-did"]},
        },
    })


def import_paths(store: Store, s: Settings, *paths: Path) -> None:
    """A fresh parser per file, as a new `callbackd import` run would have."""
    norm = normalizer(s)
    ingestor = Ingestor(store, FakeClock(AFTER_CAPTURE), detect_rules(s))
    for path in paths:
        kind = "cdr" if ".csv" in path.name else "queue_log"
        parser = cdr_parser(s, norm) if kind == "cdr" else queue_log_parser(s, norm)
        import_file(path, parser, ingestor)


def copies(path: Path, other: Path) -> list[Path]:
    """The same bytes under another name, and gzip-compressed (a rotated log)."""
    other.mkdir(exist_ok=True)
    plain = other / (path.name + ".1")
    shutil.copyfile(path, plain)
    gz = other / (path.name + ".2.gz")
    with open(path, "rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return [plain, gz]


def test_reimport_changes_nothing(store_url: str, captures: Path, tmp_path: Path) -> None:
    store = Store(store_url)
    try:
        s = capture_settings(captures)
        ql, cdr = captures / "queue_log", captures / "Master.csv"
        import_paths(store, s, ql, cdr)
        once = dump(store_url)
        # not a vacuous comparison: 18 attempts, and the two callbacks of the capture with their links
        assert len(once["attempts"]) == 18
        assert sorted(r[1] for r in once["callbacks"]) == ["+15550101", "+15550202"]
        assert len(once["callback_attempts"]) == 4 + 3 and len(once["callback_events"]) == 2

        import_paths(store, s, ql, cdr)          # the same files again
        assert_same(dump(store_url), once)
        import_paths(store, s, cdr, ql)          # again, the other way round
        assert_same(dump(store_url), once)
        for path in [*copies(ql, tmp_path / "rotated"), *copies(cdr, tmp_path / "rotated")]:
            import_paths(store, s, path)         # the same content under another path
            assert_same(dump(store_url), once)
    finally:
        store.dispose()


def test_reimport_with_dead_letters_changes_nothing(store_url: str, captures: Path, tmp_path: Path) -> None:
    """A log with malformed lines: importing it again, or a copy of it (rotated, compressed), must not
    store its dead letters again. They are the same lines of the same log."""
    path = tmp_path / "queue_log"
    lines = (captures / "queue_log").read_bytes().split(b"\n")
    lines.insert(5, b"\xff\xfe garbage")
    lines.insert(9, b"1795772440|1795772437.5|hot")                               # cut short
    lines.insert(20, b"17957x2466|1795772460.11|hotline|NONE|ABANDON|1|1|1")      # not a time
    path.write_bytes(b"\n".join(lines))
    store = Store(store_url)
    try:
        s = capture_settings(captures)
        import_paths(store, s, path)
        once = dump(store_url)
        assert len(once["dead_letters"]) == 3
        import_paths(store, s, path)
        assert_same(dump(store_url), once)
        for copy in copies(path, tmp_path / "rotated"):
            import_paths(store, s, copy)
            assert_same(dump(store_url), once)
    finally:
        store.dispose()


# -- SIGKILL in the middle of `callbackd import`, then the import again ---------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def two_databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two migrated, empty databases on one backend (PostgreSQL: throwaway databases, dropped after)."""
    if request.param == "sqlite":
        urls = (f"sqlite:///{tmp_path / 'killed.db'}", f"sqlite:///{tmp_path / 'clean.db'}")
        names: list[str] = []
    else:
        server = sa.engine.make_url(request.getfixturevalue("pg_database"))  # the server is up
        names = [f"callbackd_kill_{uuid.uuid4().hex[:10]}" for _ in range(2)]
        killed, clean = (server.set(database=n).render_as_string(hide_password=False) for n in names)
        urls = (killed, clean)
        admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            for n in names:
                c.execute(sa.text(f'CREATE DATABASE "{n}"'))
    try:
        for url in urls:
            s = Store(url)
            s.upgrade()
            s.dispose()
        yield urls
    finally:
        if names:
            with admin.connect() as c:
                for n in names:
                    c.execute(sa.text(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)'))
            admin.dispose()


def rotated_queue_logs(shared: Path, tmp_path: Path, parts: int = 6) -> list[Path]:
    """~160,000 generated lines (~11 MB) with some garbage, cut into `parts` rotated files.

    `callbackd import` commits a file in 16-MB chunks, so one 11-MB file would be one commit; a set
    of rotated logs imported in one run (oldest first, as an operator backfills them) commits at
    least once per file, so a kill lands between commits or inside one.

    The subprocess runs on the real clock, and detection opens callbacks only for failures within the
    lookback (24 h) of "now": with history that ends around today, the two runs (seconds apart) would
    see the lookback edge at different attempts. So the generated days start tomorrow (Beijing date):
    every attempt is within the lookback of both runs, which makes the whole outcome (callbacks,
    links, events) a function of event time alone, and the dumps can be compared in full.
    """
    beijing_today = (datetime.now(UTC) + timedelta(hours=8)).date()
    out = tmp_path / "generated.queue_log"
    subprocess.run([sys.executable, str(shared / "bench" / "gen_queue_log.py"), "--calls-per-day", "3000",
                    "--days", "20", "--start", str(beijing_today + timedelta(days=1)), "--seed", "20261127",
                    "-o", str(out)], check=True, capture_output=True)
    lines = out.read_bytes().rstrip(b"\n").split(b"\n")
    rng = random.Random(7)
    for i in range(40):  # dead letters too, spread over every file
        lines.insert(rng.randrange(len(lines)), b"\xff garbage %d" % i if i % 2 else b"17957x|cut %d" % i)
    size = -(-len(lines) // parts)
    paths = []
    for k in range(parts):
        path = tmp_path / f"queue_log.{parts - 1 - k}" if k < parts - 1 else tmp_path / "queue_log"
        path.write_bytes(b"\n".join(lines[k * size:(k + 1) * size]) + b"\n")
        paths.append(path)
    return paths


def cli(config: Path, logs: list[Path]) -> list[str]:
    exe = Path(sys.executable).with_name("callbackd")
    return [str(exe), "--config", str(config), "import", "queue-log", *map(str, logs)]


def config_for(url: str, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'[daemon]\nstate_dir = "{tmp_path / name}"\n\n[store]\nurl = "{url}"\n\n'
                    '[detect]\nthreshold = 3\nmin_wait_seconds = 5\ndefault_region = "CN"\n', encoding="utf-8")
    return path


def count(url: str, table: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as c:
            return int(c.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


@pytest.mark.slow
def test_sigkill_mid_import_then_again_equals_a_clean_import(two_databases: tuple[str, str], shared: Path,
                                                             tmp_path: Path) -> None:
    killed_url, clean_url = two_databases
    logs = rotated_queue_logs(shared, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLBACKD_")}  # the config file only
    killed_cfg, clean_cfg = config_for(killed_url, tmp_path, "killed"), config_for(clean_url, tmp_path, "clean")
    errors = {name: tmp_path / f"{name}.stderr" for name in ("clean", "killed", "again")}

    def run(name: str, cfg: Path) -> subprocess.Popen[bytes]:
        with open(errors[name], "wb") as err:
            return subprocess.Popen(cli(cfg, logs), env=env, stdout=subprocess.DEVNULL, stderr=err)

    # the reference: a clean import into the other database, running alongside
    with run("clean", clean_cfg) as clean, run("killed", killed_cfg) as proc:
        try:
            started = time.monotonic()
            while count(killed_url, "attempts") == 0:
                assert proc.poll() is None, f"the import ended before its first commit: {errors['killed'].read_text()}"
                assert time.monotonic() - started < 120, "no attempts after 2 minutes"
                time.sleep(0.02)
            first_commit = time.monotonic() - started
            # somewhere in what follows: between two commits, or in the middle of one
            time.sleep(random.Random().uniform(0, 0.5) * first_commit)
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(30) == -signal.SIGKILL
            assert clean.wait(300) == 0, errors["clean"].read_text()
        except BaseException:
            for p in (proc, clean):
                if p.poll() is None:
                    p.kill()
            raise
    at_kill = count(killed_url, "attempts")
    total = count(clean_url, "attempts")
    assert 0 < at_kill < total, f"not killed mid-import: {at_kill} of {total} attempts were in"

    with run("again", killed_cfg) as again:
        assert again.wait(300) == 0, errors["again"].read_text()

    reference = dump(clean_url)
    # not vacuous: tens of thousands of attempts, dead letters in every file, callbacks opened and cancelled
    assert len(reference["attempts"]) > 50_000
    assert len(reference["dead_letters"]) == 40
    states = {r[2] for r in reference["callbacks"]}
    assert {"pending", "cancelled"} <= states, states
    assert_same(dump(killed_url), reference)
