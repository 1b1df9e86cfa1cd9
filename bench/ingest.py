"""Ingest benchmark: a year of a 1,100-calls/day hotline, full import vs a bare split loop.

    .venv/bin/python bench/ingest.py [--days 365] [--store sqlite|URL] [--keep]

Generates the log with shared/bench/gen_queue_log.py --preset hotline, ending
today (so the last day falls inside the detection window and callbacks really
open), then in the same run times:
  bare:   for line in f: line.split('|')
  import: parse, normalize (E.164), detect, store — `import_file` into a fresh database
and prints both and their ratio. Target: import ≤ 6× bare on SQLite.

Other processes share the cores (the figure is wall time): the CPU time of this
process, of the import's parse worker and the load average are printed too.
It also times the floor no parser can go under: the same rows, read back from
the imported database, stored into a fresh one with the import's own bulk
statements (secondary indexes dropped and built once, one commit) and nothing
else: no parsing, normalizing or detection.

--phases also times each phase alone, in this process, one after the other:
read, parse (QueueLogParser.feed_rows), store (BulkLoad.add: the rows, no
secondary index), finish (the indexes built once, detection, commit).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def shared_dir() -> Path:
    env = os.environ.get("CALLBACKD_SHARED")
    for c in ([Path(env)] if env else []) + [ROOT.parent / "shared", ROOT.parent.parent / "shared"]:
        if (c / "bench" / "gen_queue_log.py").is_file():
            return c
    raise SystemExit("shared/ not found; set CALLBACKD_SHARED")


def generate(days: int, out: Path) -> Path:
    start = date.today() - timedelta(days=days - 1)
    path = out / f"hotline_{days}d_{start.isoformat()}.queue_log"
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(shared_dir() / "bench" / "gen_queue_log.py"), "--preset", "hotline",
                        "--days", str(days), "--start", start.isoformat(), "-o", str(path)],
                       check=True, stderr=subprocess.DEVNULL)
    return path


def bare(path: Path) -> tuple[float, float]:
    """(wall, CPU) seconds, the best of three."""
    best = (float("inf"), float("inf"))
    for _ in range(3):
        t, c = time.perf_counter(), time.process_time()
        with open(path) as f:
            for line in f:
                line.split("|")
        best = min(best, (time.perf_counter() - t, time.process_time() - c))
    return best


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def phases(path: Path, url: str) -> dict[str, float]:
    """Each phase of the import alone (CPU seconds), in this process."""
    from callback_queue.clock import SystemClock
    from callback_queue.ingest import Ingestor
    from callback_queue.store import Store
    from daemon.app import detect_rules, normalizer, queue_log_parser
    from daemon.settings import QueueLogSource, Settings, SourcesSettings
    from daemon.sources.pipeline import _positions, parse_lines, read_blocks

    s = Settings(sources=SourcesSettings(queue_log=QueueLogSource(path=path, system="bench")))
    out = {}
    c = time.process_time()
    blocks = list(read_blocks(path))
    out["read"] = time.process_time() - c
    parser = queue_log_parser(s, normalizer(s))
    c = time.process_time()
    parsed = [parse_lines(parser, b, _positions(str(path), b, o)) for b, o in blocks]
    out["parse"] = time.process_time() - c
    store = Store(url)
    store.upgrade()
    bulk = Ingestor(store, SystemClock(), detect_rules(s)).bulk()
    c = time.process_time()
    for rows, dead in parsed:
        bulk.add(rows, dead, more=len(parsed) * len(rows))
    out["store"] = time.process_time() - c
    c = time.process_time()
    bulk.close()
    out["finish"] = time.process_time() - c
    store.dispose()
    return out


def store_floor(imported_url: str, url: str) -> float:
    """Seconds to store the imported rows into a fresh database of the same schema, as the bulk load
    does (one transaction, secondary indexes dropped and built once), from Python tuples in memory."""

    from callback_queue.ingest import BULK_CACHE_KIB, COLUMNS, INSERT_SQL, build_indexes, drop_attempt_indexes
    from callback_queue.store import Store

    src = Store(imported_url)
    with src.read() as conn:
        rows = [tuple(r) for r in conn.exec_driver_sql(f"SELECT {', '.join(COLUMNS)} FROM attempts ORDER BY id")]
    src.dispose()
    store = Store(url)
    store.upgrade()
    t = time.perf_counter()
    with store.write() as conn:
        indexes = drop_attempt_indexes(conn)
        conn.exec_driver_sql(f"PRAGMA cache_size = {BULK_CACHE_KIB}")
        for i in range(0, len(rows), 20_000):
            conn.exec_driver_sql(INSERT_SQL, rows[i:i + 20_000])
        build_indexes(conn, indexes)
    elapsed = time.perf_counter() - t
    store.dispose()
    return elapsed


def full_import(path: Path, url: str) -> tuple[float, float, float, dict]:
    from callback_queue.clock import SystemClock
    from callback_queue.ingest import Ingestor
    from callback_queue.store import Store
    from daemon.app import detect_rules, normalizer, queue_log_parser
    from daemon.settings import QueueLogSource, Settings, SourcesSettings
    from daemon.sources.pipeline import import_file

    s = Settings(sources=SourcesSettings(queue_log=QueueLogSource(path=path, system="bench")))
    store = Store(url)
    store.upgrade()
    t, c, w = time.perf_counter(), time.process_time(), _children_cpu()
    ingestor = Ingestor(store, SystemClock(), detect_rules(s))
    stats = import_file(path, queue_log_parser(s, normalizer(s)), ingestor)
    elapsed, cpu, worker = time.perf_counter() - t, time.process_time() - c, _children_cpu() - w
    store.dispose()
    return elapsed, cpu, worker, {"lines": stats.lines, "attempts": stats.attempts, "dead_letters": stats.dead_letters,
                     "callbacks_opened": stats.opened, "cancelled": stats.cancelled}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--store", default="sqlite", help="'sqlite' (a fresh file) or a database URL (must be empty)")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    ap.add_argument("--phases", action="store_true", help="also time each phase alone (SQLite)")
    args = ap.parse_args()
    path = generate(args.days, ROOT / "bench" / "out")
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db" if args.store == "sqlite" else args.store
        b, b_cpu = bare(path)
        f, cpu, worker, stats = full_import(path, url)
        floor = store_floor(url, f"sqlite:///{tmp}/floor.db") if args.store == "sqlite" else None
        split = phases(path, f"sqlite:///{tmp}/phases.db") if args.phases else {}
    result = {"benchmark": "ingest", "file": path.name, "bytes": path.stat().st_size, **stats,
              "bare_s": round(b, 3), "import_s": round(f, 3), "ratio": round(f / b, 2), "target_ratio": 6.0,
              "store_floor_s": round(floor, 3) if floor is not None else None,
              "store_floor_ratio": round(floor / b, 2) if floor is not None else None,
              "bare_cpu_s": round(b_cpu, 3), "import_cpu_s": round(cpu, 3), "parse_worker_cpu_s": round(worker, 3),
              "phases_cpu_s": {k: round(v, 3) for k, v in split.items()},
              "loadavg_1m": round(os.getloadavg()[0], 2),
              "store": "sqlite" if args.store == "sqlite" else args.store.split(":")[0]}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"file            {path.name} ({result['bytes'] / 1e6:.1f} MB, {stats['lines']:,} lines)")
        print(f"attempts        {stats['attempts']:,}  dead letters {stats['dead_letters']}  "
              f"callbacks opened {stats['callbacks_opened']} (cancelled {stats['cancelled']})")
        print(f"bare split loop {b:.3f} s  (CPU {b_cpu:.3f} s)")
        print(f"full import     {f:.3f} s  ({result['store']}; CPU {cpu:.3f} s here, {worker:.3f} s in the parse "
              "worker)")
        print(f"ratio           {f / b:.2f}x  (target <= 6x)   load average {result['loadavg_1m']}")
        if floor is not None:
            print(f"store floor     {floor:.3f} s = {floor / b:.2f}x  (the same rows stored alone, from memory: "
                  "SQLite's part, which no parser removes)")
        if split:
            print("phases (CPU s)  " + "  ".join(f"{k} {v:.3f}" for k, v in split.items())
                  + f"   (sum {sum(split.values()) / b_cpu:.2f}x the bare CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
