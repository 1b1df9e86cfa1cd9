"""Ingest benchmark: a year of a 1,100-calls/day hotline, full import vs a bare split loop.

    .venv/bin/python bench/ingest.py [--days 365] [--store sqlite|URL] [--keep]

Generates the log with shared/bench/gen_queue_log.py --preset hotline, ending
today (so the last day falls inside the detection window and callbacks really
open), then in the same run times:
  bare:   for line in f: line.split('|')
  import: parse, normalize (E.164), detect, store — `import_file` into a fresh database
and prints both and their ratio. Target: import ≤ 6× bare on SQLite.
"""

from __future__ import annotations

import argparse
import json
import os
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


def bare(path: Path) -> float:
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        with open(path) as f:
            for line in f:
                line.split("|")
        best = min(best, time.perf_counter() - t)
    return best


def full_import(path: Path, url: str) -> tuple[float, dict]:
    from callback_queue.clock import SystemClock
    from callback_queue.ingest import Ingestor
    from callback_queue.store import Store
    from daemon.app import detect_rules, normalizer, queue_log_parser
    from daemon.settings import QueueLogSource, Settings, SourcesSettings
    from daemon.sources.pipeline import import_file

    s = Settings(sources=SourcesSettings(queue_log=QueueLogSource(path=path, system="bench")))
    store = Store(url)
    store.upgrade()
    t = time.perf_counter()
    ingestor = Ingestor(store, SystemClock(), detect_rules(s))
    stats = import_file(path, queue_log_parser(s, normalizer(s)), ingestor)
    elapsed = time.perf_counter() - t
    store.dispose()
    return elapsed, {"lines": stats.lines, "attempts": stats.attempts, "dead_letters": stats.dead_letters,
                     "callbacks_opened": stats.opened, "cancelled": stats.cancelled}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--store", default="sqlite", help="'sqlite' (a fresh file) or a database URL (must be empty)")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    args = ap.parse_args()
    path = generate(args.days, ROOT / "bench" / "out")
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db" if args.store == "sqlite" else args.store
        b = bare(path)
        f, stats = full_import(path, url)
    result = {"benchmark": "ingest", "file": path.name, "bytes": path.stat().st_size, **stats,
              "bare_s": round(b, 3), "import_s": round(f, 3), "ratio": round(f / b, 2), "target_ratio": 6.0,
              "store": "sqlite" if args.store == "sqlite" else args.store.split(":")[0]}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"file            {path.name} ({result['bytes'] / 1e6:.1f} MB, {stats['lines']:,} lines)")
        print(f"attempts        {stats['attempts']:,}  dead letters {stats['dead_letters']}  "
              f"callbacks opened {stats['callbacks_opened']} (cancelled {stats['cancelled']})")
        print(f"bare split loop {b:.3f} s")
        print(f"full import     {f:.3f} s  ({result['store']})")
        print(f"ratio           {f / b:.2f}x  (target <= 6x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
