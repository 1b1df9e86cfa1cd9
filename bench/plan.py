"""Planning benchmark: plan 100,000 open callbacks over 7 days of windows, vs a plain SELECT of them.

    .venv/bin/python bench/plan.py [--count 100000] [--store sqlite|postgresql|URL] [--repeat N] [--json]

In the same run: the time of `SELECT * FROM callbacks` over those rows (fetching every row), and
the time of a full `Planner.replan()` (read, plan, write every row's window and due time — the first
plan writes all of them, records a "scheduled" event for each (pending -> scheduled, one per callback), and
an sla-at-risk event for each callback it cannot plan within its SLA). Prints both and the ratio. Target:
replan <= 5x the SELECT.

The machine is shared: wall times move with the load average (printed). Beside the wall-clock ratio
the CPU ratio is printed: CPU seconds of this process plus, on PostgreSQL, of the server backends
serving it (from /proc), for the SELECT and for the replan. It barely moves with the load, so it is the
figure to compare two versions by. --repeat N runs N times, each on a fresh database, and reports the
median ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
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


class CpuMeter:
    """CPU seconds used by this process and, on PostgreSQL, by the server backends of one database."""

    def __init__(self, admin: sa.Engine | None, database: str | None) -> None:
        self.admin, self.database = admin, database
        self.tick = os.sysconf("SC_CLK_TCK")

    def _backends(self) -> dict[int, float]:
        if self.admin is None:
            return {}
        with self.admin.connect() as c:
            pids = c.execute(sa.text("SELECT pid FROM pg_stat_activity WHERE datname = :d AND backend_type = "
                                     "'client backend'"), {"d": self.database}).scalars().all()
        out = {}
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:       # not on this machine, or gone
                continue
            out[pid] = (int(fields[11]) + int(fields[12])) / self.tick
        return out

    def measure(self, fn: Callable[[], Any]) -> tuple[Any, float, float]:
        """(fn's result, wall seconds, CPU seconds)"""
        before = self._backends()
        c0, t0 = time.process_time(), time.perf_counter()
        result = fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        after = self._backends()
        cpu += sum(v - before.get(pid, 0.0) for pid, v in after.items())
        return result, wall, cpu


def run(url: str, count: int, meter: CpuMeter) -> dict:
    store = Store(url)
    store.upgrade()
    tz = ZoneInfo("Asia/Shanghai")
    now = datetime(2026, 3, 2, 9, 0, tzinfo=tz).astimezone(UTC)
    seed(store, count, now)
    rules = ScheduleRules(tz=tz, workday=(TimeRange.parse("12:00-13:30"), TimeRange.parse("18:30-20:30")),
                          restday=(TimeRange.parse("10:00-12:00"), TimeRange.parse("15:00-17:00")),
                          quiet=(TimeRange.parse("21:00-08:30"),), capacity=Capacity(fixed=count // 12))

    def select_all() -> int:
        with store.read() as conn:
            return len(conn.execute(sa.select(t.callbacks)).all())

    load = os.getloadavg()[0]
    n, select_s, select_cpu = meter.measure(select_all)
    planner = Planner(store, FakeClock(now), rules, horizon=timedelta(days=7))
    report, plan_s, plan_cpu = meter.measure(planner.replan)
    again, replan_s, _ = meter.measure(planner.replan)
    # what the first plan stored, checked against its report
    cb, ev = t.callbacks, t.callback_events
    with store.read() as conn:
        stored = conn.execute(sa.select(sa.func.count()).select_from(cb).where(
            cb.c.state == "scheduled", cb.c.window_start.is_not(None), cb.c.due_at >= now)).scalar_one()
        events = conn.execute(sa.select(sa.func.count()).select_from(ev)
                              .where(ev.c.event == "sla-at-risk")).scalar_one()
    store.dispose()
    if (stored, events) != (report.planned, len(report.new_breaches)):
        raise SystemExit(f"the stored plan does not match the report: {stored:,} rows scheduled and {events:,} "
                         f"sla-at-risk events for {report.planned:,} planned and {len(report.new_breaches):,} breaches")
    return {"rows": n, "select_s": round(select_s, 3), "plan_s": round(plan_s, 3), "ratio": round(plan_s / select_s, 2),
            "select_cpu_s": round(select_cpu, 3), "plan_cpu_s": round(plan_cpu, 3),
            "cpu_ratio": round(plan_cpu / select_cpu, 2), "load_avg": round(load, 2),
            "replan_unchanged_s": round(replan_s, 3), "planned": report.planned, "unplaced": report.unplaced,
            "sla_breaches": len(report.new_breaches), "windows": len(report.plan.windows),
            "moved_on_second_run": again.moved, "breaches_on_second_run": len(again.new_breaches)}


def run_once(store_arg: str, count: int) -> dict:
    if store_arg == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            return run(f"sqlite:///{tmp}/plan.db", count, CpuMeter(None, None))
    if store_arg != "postgresql":
        return run(store_arg, count, CpuMeter(None, None))
    name = f"callbackd_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        url = sa.engine.make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
        return run(url, count, CpuMeter(admin, name))
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--store", default="sqlite", help="sqlite | postgresql | a URL of an empty database")
    ap.add_argument("--repeat", type=int, default=1, help="runs, each on a fresh database; medians are reported")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.repeat < 1 or (args.repeat > 1 and args.store not in ("sqlite", "postgresql")):
        ap.error("--repeat needs a positive count, and a fresh database per run (--store sqlite or postgresql)")
    runs = [run_once(args.store, args.count) for _ in range(args.repeat)]
    mid = sorted(runs, key=lambda r: r["ratio"])[(len(runs) - 1) // 2]       # the run with the median ratio
    r = {"benchmark": "plan", "store": args.store, "target_ratio": 5.0, **mid,
         "ratio": statistics.median(x["ratio"] for x in runs),
         "cpu_ratio": statistics.median(x["cpu_ratio"] for x in runs),
         "runs": [{k: x[k] for k in ("ratio", "cpu_ratio", "select_s", "plan_s", "load_avg")} for x in runs]}
    if args.json:
        print(json.dumps(r))
    else:
        print(f"store            {args.store}; {r['rows']:,} open callbacks, {r['windows']} windows in 7 days")
        print(f"plain SELECT     {r['select_s']:.3f} s  (CPU {r['select_cpu_s']:.3f} s)")
        print(f"plan + store     {r['plan_s']:.3f} s  (CPU {r['plan_cpu_s']:.3f} s; planned {r['planned']:,}, "
              f"unplaced {r['unplaced']:,}, SLA breaches {r['sla_breaches']:,})")
        print(f"ratio            {r['ratio']:.2f}x  (target <= 5x); CPU ratio {r['cpu_ratio']:.2f}x; "
              f"load average {r['load_avg']:.2f}")
        if len(runs) > 1:
            each = (f"{x['ratio']:.2f}x (CPU {x['cpu_ratio']:.2f}x, load {x['load_avg']:.1f})" for x in runs)
            print("runs             " + "; ".join(each) + "  (medians above)")
        print(f"replan, nothing changed: {r['replan_unchanged_s']:.3f} s (moved {r['moved_on_second_run']}, "
              f"new breaches {r['breaches_on_second_run']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
