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
