"""SIGKILL `callbackd import queue-log` at random points; re-run; the database always equals the model.

After every kill, the database equals the model evaluated over the attempts it holds (a batch is
all or nothing, and detection never got ahead of or behind its attempts); after a clean final run,
it equals the model over the whole log and holds every attempt exactly as written.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from callback_queue.detection import DetectRules
from tests.conftest import shared_dir
from tests.support.crash import Proc, cli, seeded, write_config
from tests.support.dbcheck import model_mismatches, read_attempt_ids, read_callbacks
from tests.support.model import expected, read_gen_queue_log

RULES = DetectRules(threshold=3, lookback_seconds=3650 * 86400, min_wait_seconds=5)


def _split(log: Path, parts: int) -> list[Path]:
    lines = log.read_text().splitlines(keepends=True)
    size = -(-len(lines) // parts)
    out = []
    for i in range(parts):
        p = log.parent / f"queue_log.{parts - i}"   # oldest first, as logrotate names them
        p.write_text("".join(lines[i * size:(i + 1) * size]))
        out.append(p)
    return out


def test_sigkill_during_import_loses_nothing_and_doubles_nothing(tmp_path: Path, store_url: str):
    rng, seed, n = seeded("crash/import")
    log = tmp_path / "generated.queue_log"
    subprocess.run([sys.executable, str(shared_dir() / "bench" / "gen_queue_log.py"), "--calls-per-day", "1100",
                    "--days", "12", "--seed", str(seed), "-o", str(log)], check=True, capture_output=True)
    written = read_gen_queue_log(log.read_text().splitlines(), "pbx")
    by_id = {a.call_id: a for a in written}
    files = _split(log, 4)
    cfg = write_config(tmp_path, store_url)

    kills = completed = 0
    window = 2.5  # shrinks to the quickest run that finished before its kill
    for i in range(n):
        started = time.monotonic()
        proc = Proc(cfg, "import", "queue-log", *map(str, files), tag=f"import{i}")
        rc = proc.kill_after(rng.uniform(0.3, window))
        if rc is None:
            kills += 1
        else:
            assert rc == 0, proc.stderr()
            completed += 1
            window = max(0.4, min(window, 0.9 * (time.monotonic() - started)))
        # the database equals the model over what it holds
        stored = read_attempt_ids(store_url)
        assert set(stored) <= set(by_id), "attempts that were never written"
        for cid, (outcome, number) in stored.items():
            assert (outcome, number) == (by_id[cid].outcome.value, by_id[cid].number), cid
        now = int(time.time())
        problems = model_mismatches(expected([by_id[c] for c in stored], RULES, now), read_callbacks(store_url))
        assert problems == [], f"after kill {i}: {problems[:5]}"
    print(f"crash/import: {kills} killed mid-run, {completed} finished before the kill")
    assert kills >= 1 or n == 0, "no kill landed mid-import: the timing window is wrong"

    cli(cfg, "import", "queue-log", *map(str, files))
    stored = read_attempt_ids(store_url)
    assert set(stored) == set(by_id), "attempts lost or invented"
    assert {c: (a.outcome.value, a.number) for c, a in by_id.items()} == stored
    exp = expected(written, RULES, int(time.time()))
    assert len(exp.owed) > 10 and len(exp.cancelled) > 10
    assert model_mismatches(exp, read_callbacks(store_url)) == []


def _processes_with(marker: str) -> list[int]:
    """PIDs whose command line holds `marker` (a forked parse worker has its parent's command line)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker.encode() in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def test_sigkill_during_a_forked_worker_import(tmp_path: Path, store_url: str):
    """The same, for a file large enough (>= 8 MiB) that the import forks a parse worker and, on SQLite, loads
    it as one bulk transaction that drops and rebuilds the attempts' indexes: after a kill the transaction is
    gone whole (indexes included) and the orphaned worker ends by itself."""
    from daemon.sources.pipeline import _size

    rng, seed, n = seeded("crash/import-worker")
    log = tmp_path / "queue_log"
    subprocess.run([sys.executable, str(shared_dir() / "bench" / "gen_queue_log.py"), "--calls-per-day", "1100",
                    "--days", "45", "--seed", str(seed), "-o", str(log)], check=True, capture_output=True)
    assert (_size(log) or 0) >= 8 << 20, "too small for the parse worker"
    written = read_gen_queue_log(log.read_text().splitlines(), "pbx")
    by_id = {a.call_id: a for a in written}
    cfg = write_config(tmp_path, store_url)
    kills = 0
    window = 2.5
    for i in range(n):
        started = time.monotonic()
        proc = Proc(cfg, "import", "queue-log", str(log), tag=f"import{i}")
        rc = proc.kill_after(rng.uniform(0.3, window))
        if rc is None:
            kills += 1
        else:
            assert rc == 0, proc.stderr()
            window = max(0.4, min(window, 0.9 * (time.monotonic() - started)))
        deadline = time.monotonic() + 20
        while _processes_with(str(cfg)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _processes_with(str(cfg)) == [], "a parse worker outlived its killed importer"
        stored = read_attempt_ids(store_url)
        assert set(stored) <= set(by_id), "attempts that were never written"
        problems = model_mismatches(expected([by_id[c] for c in stored], RULES, int(time.time())),
                                    read_callbacks(store_url))
        assert problems == [], f"after kill {i}: {problems[:5]}"
    print(f"crash/import-worker: {kills} killed mid-run")
    assert kills >= 1 or n == 0, "no kill landed mid-import: the timing window is wrong"

    cli(cfg, "import", "queue-log", str(log))
    stored = read_attempt_ids(store_url)
    assert {c: (a.outcome.value, a.number) for c, a in by_id.items()} == stored
    assert model_mismatches(expected(written, RULES, int(time.time())), read_callbacks(store_url)) == []
    if store_url.startswith("sqlite"):
        import sqlite3

        db = sqlite3.connect(store_url.split("///", 1)[1])
        try:
            names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'attempts' "
                                              "AND type = 'index'")}
            assert {"ix_attempts_number_started_ts", "ix_attempts_started_ts"} <= names
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        finally:
            db.close()
