"""Planning benchmark: plan 100,000 open callbacks over 7 days of windows, vs a plain SELECT of them.

    .venv/bin/python bench/plan.py [--count 100000] [--store sqlite|postgresql|URL]

In the same run: the time of `SELECT * FROM callbacks` over those rows (fetching every row), and
the time of a full `Planner.replan()` (read, plan, write every row's window and due time — the first
plan writes all of them). Prints both and the ratio. Target: replan <= 5x the SELECT.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from callback_queue import schema as t  # noqa: E402
from callback_queue.clock import FakeClock  # noqa: E402
from callback_queue.planner import Planner  # noqa: E402
from callback_queue.store import Store  # noqa: E402
from callback_queue.windows import Capacity, ScheduleRules, TimeRange  # noqa: E402

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def seed(store: Store, count: int, now: datetime) -> None:
    rows = []
    for i in range(count):
        trig = now - timedelta(seconds=i * 3 % 80000)
        rows.append({"kind": "recall", "number": f"+86138{i:08d}", "state": "pending", "priority": i % 3,
                     "failures": 3 + i % 4, "episode_start": trig - timedelta(minutes=20), "triggered_at": trig,
                     "last_failed_at": trig, "due_at": trig, "dial_attempts": 0, "created_at": now,
                     "updated_at": now})
    with store.write() as conn:
        for i in range(0, count, 10000):
            conn.execute(t.callbacks.insert(), rows[i:i + 10000])


def run(url: str, count: int) -> dict:
    store = Store(url)
    store.upgrade()
    tz = ZoneInfo("Asia/Shanghai")
    now = datetime(2026, 3, 2, 9, 0, tzinfo=tz).astimezone(UTC)
    seed(store, count, now)
    rules = ScheduleRules(tz=tz, workday=(TimeRange.parse("12:00-13:30"), TimeRange.parse("18:30-20:30")),
                          restday=(TimeRange.parse("10:00-12:00"), TimeRange.parse("15:00-17:00")),
                          quiet=(TimeRange.parse("21:00-08:30"),), capacity=Capacity(fixed=count // 12))
    t0 = time.perf_counter()
    with store.read() as conn:
        n = len(conn.execute(sa.select(t.callbacks)).all())
    select_s = time.perf_counter() - t0
    planner = Planner(store, FakeClock(now), rules, horizon=timedelta(days=7))
    t0 = time.perf_counter()
    report = planner.replan()
    plan_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = planner.replan()
    replan_s = time.perf_counter() - t0
    store.dispose()
    return {"rows": n, "select_s": round(select_s, 3), "plan_s": round(plan_s, 3), "ratio": round(plan_s / select_s, 2),
            "replan_unchanged_s": round(replan_s, 3), "planned": report.planned, "unplaced": report.unplaced,
            "sla_breaches": len(report.new_breaches), "windows": len(report.plan.windows),
            "moved_on_second_run": again.moved}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--store", default="sqlite", help="sqlite | postgresql | a URL of an empty database")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cleanup = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.store == "sqlite":
            url = f"sqlite:///{tmp}/plan.db"
        elif args.store == "postgresql":
            name = f"callbackd_bench_{uuid.uuid4().hex[:8]}"
            admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                c.execute(sa.text(f'CREATE DATABASE "{name}"'))
            url = sa.engine.make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)

            def cleanup() -> None:
                with admin.connect() as c:
                    c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        else:
            url = args.store
        try:
            r = run(url, args.count)
        finally:
            if cleanup:
                cleanup()
    r = {"benchmark": "plan", "store": args.store, "target_ratio": 5.0, **r}
    if args.json:
        print(json.dumps(r))
    else:
        print(f"store            {args.store}; {r['rows']:,} open callbacks, {r['windows']} windows in 7 days")
        print(f"plain SELECT     {r['select_s']:.3f} s")
        print(f"plan + store     {r['plan_s']:.3f} s  (planned {r['planned']:,}, unplaced {r['unplaced']:,}, "
              f"SLA breaches {r['sla_breaches']:,})")
        print(f"ratio            {r['ratio']:.2f}x  (target <= 5x)")
        print(f"replan, nothing changed: {r['replan_unchanged_s']:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
