"""Every benchmark in the repo, one table, each figure beside a baseline measured in the same run.

    .venv/bin/python bench/run_all.py [--quick] [--soak [--soak-minutes N]] [--json] [--only NAME ...]

Rows:
  ingest ratio      bench/ingest.py --json on SQLite and PostgreSQL: full import vs a bare split loop
  store floor       (SQLite) the same rows stored alone from memory: the part of the ratio no parser removes
  AMI pipeline      bench/ami.py --json (when it exists and has --json): pipeline vs the bare client
  planning ratio    bench/plan.py --json on SQLite and PostgreSQL: replan vs a plain SELECT
  API p99, claim p99  bench/api.py --json (when it exists and has --json): vs the bare SQL claim
  idle RSS          the real daemon on SQLite with the demo's configuration, once idle (VmRSS), vs an
                    idle bare `python` (target < 80 MiB)
  CLI start-up      `callbackd --help`, median of 10 runs, vs `python -c pass` (target < 0.3 s)
  soak              bench/soak.py --json on SQLite and PostgreSQL when asked (--soak [--soak-minutes N],
                    30 by default): RSS growth after warm-up and the worst AMI-event-to-commit lag, at
                    10x a Beijing-scale peak hour; else "soak not run"

A benchmark script that is missing, or has no --json flag yet, is listed as not run (with why), never
silently dropped. --quick passes smaller sizes to each script (a smoke run; its figures are not the
targets' figures).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
PY = sys.executable
PG_ADMIN = os.environ.get("CALLBACKD_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MIB = 1024 * 1024


@dataclass
class Row:
    metric: str
    value: str
    baseline: str
    target: str
    status: str  # ok | MISSED | not run | info
    note: str = ""


# -- running the scripts -----------------------------------------------------------------------------
def has_json_flag(script: Path) -> bool:
    return script.is_file() and re.search(r"""["']--json["']""", script.read_text(encoding="utf-8")) is not None


def run_json(script: Path, args: list[str], timeout: float,
             ok_codes: tuple[int, ...] = (0,)) -> tuple[dict[str, Any] | None, str]:
    """Run `script --json args`; the last stdout line that is a JSON object, or (None, why)."""
    if not script.is_file():
        return None, f"{script.relative_to(ROOT)} does not exist"
    if not has_json_flag(script):
        return None, f"{script.relative_to(ROOT)} has no --json flag yet"
    try:
        p = subprocess.run([PY, str(script), "--json", *args], capture_output=True, text=True, timeout=timeout,
                           cwd=ROOT)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    if p.returncode not in ok_codes:
        return None, f"exit {p.returncode}: {(p.stderr or p.stdout).strip().splitlines()[-1:]}"
    for line in reversed(p.stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line), ""
            except json.JSONDecodeError:
                continue
    return None, "no JSON line in its output"


class PgDatabase:
    """A fresh, empty PostgreSQL database for one script (dropped afterwards)."""

    def __init__(self, prefix: str = "callbackd_bench") -> None:
        self.prefix = prefix

    def __enter__(self) -> str:
        import sqlalchemy as sa

        self.name = f"{self.prefix}_{uuid.uuid4().hex[:8]}"
        self.admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with self.admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{self.name}"'))
        return sa.engine.make_url(PG_ADMIN).set(database=self.name).render_as_string(hide_password=False)

    def __exit__(self, *exc: object) -> None:
        import sqlalchemy as sa

        with self.admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self.admin.dispose()


def _num(d: dict[str, Any], *keys: str) -> float | None:
    for k in keys:
        v = d.get(k)
        if isinstance(v, int | float):
            return float(v)
    return None


def _find(d: dict[str, Any], pattern: str) -> list[tuple[str, float]]:
    """Numeric fields whose key matches (for scripts whose JSON this file does not know yet)."""
    rx = re.compile(pattern)
    out = []
    stack: list[tuple[str, Any]] = list(d.items())
    while stack:
        k, v = stack.pop(0)
        if isinstance(v, dict):
            stack += [(f"{k}.{k2}", v2) for k2, v2 in v.items()]
        elif isinstance(v, int | float) and not isinstance(v, bool) and rx.search(k):
            out.append((k, float(v)))
    return out


def _status(ok: bool) -> str:
    return "ok" if ok else "MISSED"


# -- the benchmarks ----------------------------------------------------------------------------------
def bench_ingest(quick: bool, timeout: float) -> list[Row]:
    rows = []
    days = ["--days", "30"] if quick else []
    for backend in ("sqlite", "postgresql"):
        if backend == "postgresql":
            try:
                with PgDatabase() as url:
                    r, why = run_json(BENCH / "ingest.py", [*days, "--store", url], timeout)
            except Exception as exc:  # the server is down: say so in the table
                r, why = None, f"PostgreSQL: {exc.__class__.__name__}"
        else:
            r, why = run_json(BENCH / "ingest.py", days, timeout)
        if r is None:
            rows.append(Row(f"ingest ratio ({backend})", "-", "-", "<= 6x (SQLite)", "not run", why))
            continue
        ratio = _num(r, "ratio") or r["import_s"] / r["bare_s"]
        target = 6.0 if backend == "sqlite" else None
        rows.append(Row(f"ingest ratio ({backend})", f"{ratio:.2f}x  import {r['import_s']:.2f} s",
                        f"bare split {r['bare_s']:.3f} s", "<= 6x" if target else "(none; info)",
                        _status(ratio <= target) if target else "info",
                        f"{r.get('lines', 0):,} lines, {r.get('callbacks_opened', '?')} callbacks"))
        if r.get("store_floor_s") is not None:
            floor = r["store_floor_s"]
            rows.append(Row(f"store floor ({backend})", f"{floor / r['bare_s']:.2f}x  store {floor:.2f} s",
                            f"bare split {r['bare_s']:.3f} s", "(info)", "info",
                            "the same rows stored alone from memory: no parser can go below"))
    return rows


def bench_plan(quick: bool, timeout: float) -> list[Row]:
    rows = []
    count = ["--count", "20000"] if quick else []
    for backend in ("sqlite", "postgresql"):
        r, why = run_json(BENCH / "plan.py", [*count, "--store", backend], timeout)
        if r is None:
            rows.append(Row(f"planning ratio ({backend})", "-", "-", "<= 5x", "not run", why))
            continue
        ratio = _num(r, "ratio") or r["plan_s"] / r["select_s"]
        rows.append(Row(f"planning ratio ({backend})", f"{ratio:.2f}x  replan {r['plan_s']:.2f} s",
                        f"SELECT {r['select_s']:.3f} s", "<= 5x", _status(ratio <= 5.0),
                        f"{r.get('rows', 0):,} callbacks"))
    return rows


def bench_ami(quick: bool, timeout: float) -> list[Row]:
    r, why = run_json(BENCH / "ami.py", ["--events", "20000"] if quick else [], timeout)
    if r is None:
        return [Row("AMI pipeline ratio", "-", "-", "(issue 3)", "not run", why)]
    ratio = _num(r, "ratio", "pipeline_ratio")
    found = ", ".join(f"{k}={v:g}" for k, v in _find(r, r"rate|ratio|lost"))
    ok = ratio is not None and ratio >= 0.5 and not r.get("lost")
    return [Row("AMI pipeline ratio", f"{ratio:.0%} of bare" if ratio is not None else "?",
                f"bare client {r.get('bare_rate', 0):,} events/s", ">= 50%, none lost",
                _status(ok) if ratio is not None else "info", found[:120])]


def bench_api(quick: bool, timeout: float) -> list[Row]:
    r, why = run_json(BENCH / "api.py", ["--callbacks", "100000", "--requests", "30"] if quick else [], timeout)
    if r is None:
        return [Row("API p99", "-", "-", "< 50 ms", "not run", why),
                Row("claim p99", "-", "-", "<= 5x bare", "not run", why)]
    p99s = _find(r, r"p99")
    api = [v for k, v in p99s if "bare" not in k and "claim" not in k]
    claim = [v for k, v in p99s if "claim" in k and "bare" not in k]
    bare = [v for k, v in p99s if "bare" in k]
    worst = max(api + claim) if api or claim else None
    rows = [Row("API p99", f"{worst:.1f} ms" if worst is not None else "?",
                f"bare claim {bare[0]:.1f} ms" if bare else "-", "< 50 ms",
                _status(worst < 50) if worst is not None else "info", ", ".join(f"{k}={v:g}" for k, v in p99s)[:120])]
    if claim and bare:
        ratio = claim[0] / bare[0] if bare[0] else float("inf")
        rows.append(Row("claim p99", f"{claim[0]:.1f} ms", f"bare statement {bare[0]:.1f} ms", "<= 5x bare",
                        _status(ratio <= 5), f"{ratio:.1f}x"))
    else:
        rows.append(Row("claim p99", "?", "-", "<= 5x bare", "info", "no claim/bare p99 fields in its JSON"))
    return rows


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def _settled_rss(pid: int, at_least: float, limit: float) -> int:
    """RSS once it has stopped moving (three samples within 1%), after `at_least` seconds."""
    time.sleep(at_least)
    samples = [_rss(pid)]
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(0.5)
        samples.append(_rss(pid))
        last = samples[-3:]
        if len(last) == 3 and max(last) - min(last) <= 0.01 * max(last):
            break
    return samples[-1]


def bench_idle_rss() -> list[Row]:
    from daemon.demo import DEMO_CONFIG

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "asterisk").mkdir()
        (d / "asterisk" / "queue_log").write_text("")
        cfg_text = DEMO_CONFIG.replace("port = 8080", "port = 0").replace('log_format = "console"',
                                                                          'log_format = "json"')
        (d / "callbackd.toml").write_text(cfg_text)
        base = [PY, "-m", "daemon", "--config", str(d / "callbackd.toml")]
        subprocess.run([*base, "db", "upgrade"], cwd=d, check=True, capture_output=True, timeout=120)
        with open(d / "daemon.err", "wb") as err:
            p = subprocess.Popen([*base, "run"], cwd=d, stdout=subprocess.DEVNULL, stderr=err)
        bare = subprocess.Popen([PY, "-c", "import time; time.sleep(60)"])
        try:
            ok = False
            for _ in range(100):  # started: the daemon logs daemon.started once it is up
                if b"daemon.started" in (d / "daemon.err").read_bytes():
                    ok = True
                    break
                if p.poll() is not None:
                    break
                time.sleep(0.2)
            if not ok:
                tail = (d / "daemon.err").read_text(errors="replace")[-300:]
                return [Row("idle RSS (daemon, SQLite, demo config)", "-", "-", "< 80 MiB", "not run",
                            f"daemon did not start: {tail}")]
            rss = _settled_rss(p.pid, 3.0, 20.0)
            base_rss = _rss(bare.pid)
        finally:
            bare.kill()
            bare.wait()
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return [Row("idle RSS (daemon, SQLite, demo config)", f"{rss / MIB:.1f} MiB",
                f"bare python {base_rss / MIB:.1f} MiB", "< 80 MiB", _status(rss < 80 * MIB))]


def _median_run(cmd: list[str], n: int = 10) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_cli_startup() -> list[Row]:
    exe = Path(PY).with_name("callbackd")
    cmd = [str(exe), "--help"] if exe.exists() else [PY, "-m", "daemon", "--help"]
    _median_run(cmd, 2)  # warm the page cache and .pyc files
    t = _median_run(cmd)
    base = _median_run([PY, "-c", "pass"])
    return [Row("CLI start-up (callbackd --help)", f"{t * 1000:.0f} ms", f"python -c pass {base * 1000:.0f} ms",
                "< 300 ms", _status(t < 0.3), "median of 10")]


def bench_soak(asked: bool, minutes: float, timeout: float) -> list[Row]:
    target = "RSS +<10%, lag < 1 s"
    if not asked:
        return [Row("soak", "soak not run", "-", target, "not run", "pass --soak [--soak-minutes N]")]
    rows = []
    for backend in ("sqlite", "postgresql"):
        r, why = run_json(BENCH / "soak.py", ["--minutes", f"{minutes:g}", "--store", backend], timeout,
                        ok_codes=(0, 1))  # 1: it ran and FAILED; its JSON says why
        metric = f"soak {minutes:g} min ({backend})"
        if r is None:
            rows.append(Row(metric, "-", "-", target, "not run", why))
            continue
        rows.append(Row(metric, f"RSS {r['rss_growth_pct']:+.1f}%  lag max {r['lag_max_s'] * 1000:.0f} ms",
                        f"RSS {r['rss_warm_mib']} MiB after warm-up", target, _status(bool(r["pass"])),
                        f"RSS end {r['rss_end_mib']} MiB, lag p99 {r['lag_p99_s'] * 1000:.0f} ms, fds "
                        f"{r['fds_min']}..{r['fds_max']}, DB conns {r['db_conns_min']}..{r['db_conns_max']}, "
                        f"{r['visits_sent']:,} visits at {r['rate_visits_per_s']}/s, lost {r['lost']}"))
    return rows


# -- the table ---------------------------------------------------------------------------------------
def table(rows: list[Row]) -> str:
    head = ("metric", "value", "baseline (same run)", "target", "status", "note")
    data = [head] + [(r.metric, r.value, r.baseline, r.target, r.status, r.note) for r in rows]
    widths = [max(len(x[i]) for x in data) for i in range(5)]
    lines = []
    for i, x in enumerate(data):
        lines.append("  ".join(x[j].ljust(widths[j]) for j in range(5)) + ("  " + x[5] if x[5] else ""))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


STEPS = ("ingest", "ami", "plan", "api", "rss", "startup", "soak")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run, not the targets' figures")
    ap.add_argument("--soak", action="store_true", help="run bench/soak.py too, on SQLite and PostgreSQL")
    ap.add_argument("--soak-minutes", type=float, default=30.0, help="each soak's length (default 30)")
    ap.add_argument("--only", nargs="+", choices=STEPS, help="run only these")
    ap.add_argument("--timeout", type=float, default=1800, help="per script, seconds")
    ap.add_argument("--json", action="store_true", help="print the rows as one JSON line too")
    args = ap.parse_args(argv)
    steps = args.only or STEPS
    rows: list[Row] = []
    started = time.monotonic()
    for step in steps:
        t = time.monotonic()
        print(f"running {step} ...", file=sys.stderr, flush=True)
        if step == "ingest":
            rows += bench_ingest(args.quick, args.timeout)
        elif step == "ami":
            rows += bench_ami(args.quick, args.timeout)
        elif step == "plan":
            rows += bench_plan(args.quick, args.timeout)
        elif step == "api":
            rows += bench_api(args.quick, args.timeout)
        elif step == "rss":
            rows += bench_idle_rss()
        elif step == "startup":
            rows += bench_cli_startup()
        elif step == "soak":
            rows += bench_soak(args.soak, args.soak_minutes, max(args.timeout, args.soak_minutes * 60 + 600))
        print(f"  {step}: {time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
    print(table(rows))
    print(f"\n{len(rows)} rows in {time.monotonic() - started:.0f} s; machine: {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}{' (quick sizes)' if args.quick else ''}")
    if args.json:
        print(json.dumps([r.__dict__ for r in rows]))
    return 1 if any(r.status == "MISSED" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
