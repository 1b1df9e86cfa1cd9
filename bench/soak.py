"""Soak: the real daemon under 10x a Beijing-scale peak hour of AMI traffic, sampled as it runs.

The rate. Beijing's 12345 hotline takes about 66,000 calls a day (DESIGN.md). The hourly load
profile of shared/bench/gen_queue_log.py (HOURLY, Beijing time; it sums to 94.6) puts 8.2/94.6 =
8.67 % of a day's calls in its busiest hour (10-11), and its weekday factor is 1.08 (DOW; mean 1.0):
    66,000 x 8.2 / 94.6 x 1.08 = 6,179 queue visits in a weekday peak hour
    x 10                       = 61,786 visits an hour = 17.2 visits a second
("calls" there are queue entries including retries, as QueueCallerJoin counts them here).

The traffic. As bench/ami.py: the real Asterisk 22 transcript (captures/ami_full_scenario.raw:
1,946 events, 18 queue visits) repeated, each copy with its own Uniqueids, caller numbers from a
pool of Chinese mobiles (a number comes back every 500 copies, about 9 minutes, so streaks open
callbacks) and a `Timestamp:` of the moment it is sent (timestampevents=yes). The test AMI server
(tests/support/ami_server.py, threads of this process) applies the daemon's AMI Filter and event
mask as Asterisk does and streams the copies' events evenly at 17.2 visits a second.

The daemon. `python -m daemon run` as a subprocess (logs to a file: a pipe nobody drains stalls it
at 64 KiB), a demo-like configuration with HTTP on, on a fresh SQLite database (or --store
postgresql: a fresh database on the test server, dropped afterwards).

Sampled every --interval seconds:
  RSS           VmRSS of the daemon
  fds           entries of /proc/PID/fd
  DB conns      SQLite: the daemon's open handles on the database file; PostgreSQL: backends of
                the soak's database in pg_stat_activity, less this script's own
  lag           a marker visit (QueueCallerJoin, HangupRequest, QueueCallerAbandon: the abandon
                decides it) sent between the traffic's events; lag = from sending the abandon to
                its attempt row being visible in the database (polled every 20 ms), i.e. through
                the socket, the reducer, the batch flush and the commit
Pass: after the warm-up, RSS grows less than 10 % (end vs end of warm-up) and every lag < 1 s; and
every visit sent is an attempt in the store (the last copy is finished before the count).

    .venv/bin/python bench/soak.py [--minutes 30] [--warmup 5] [--store sqlite|postgresql] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from run_all import PgDatabase  # noqa: E402  (bench/ is on the path: this script's own folder)
from support.ami_server import AmiTestServer, event_packets  # noqa: E402

PY = sys.executable
PG_ADMIN = os.environ.get("CALLBACKD_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MIB = 1024 * 1024
BEIJING_CALLS_PER_DAY = 66_000
HOURLY = [0.5, 0.3, 0.2, 0.2, 0.3, 0.6, 1.5, 3.5, 6.5, 8.0, 8.2, 7.5, 5.5, 6.0, 7.4,
          7.8, 7.2, 6.0, 4.5, 3.8, 3.4, 2.8, 1.9, 1.0]  # shared/bench/gen_queue_log.py
WEEKDAY = 1.08  # its DOW factor Mon..Fri
PEAK_VISITS_PER_HOUR = BEIJING_CALLS_PER_DAY * max(HOURLY) / sum(HOURLY) * WEEKDAY
RATE = 10 * PEAK_VISITS_PER_HOUR / 3600  # visits a second
NUMBER_CYCLE = 500  # copies before a caller number comes back

_UID = re.compile(rb"\b1795772(\d{3})\.")
_NUM = re.compile(rb"\b5550(\d{3})\b")
_TS = re.compile(rb"\r\nTimestamp: [0-9.]+\r\n")

CONFIG = """\
[daemon]
state_dir = "state"
timezone = "Asia/Shanghai"
log_format = "json"

[store]
{store}

[detect]
threshold = 3
lookback = "24h"
min_wait_seconds = 5
default_region = "CN"

[[sources.ami]]
name = "pbx"
host = "127.0.0.1"
port = {port}
username = "callbackd"
secret = "callbackd-secret"

[http]
port = 0

[schedule]
workday = ["00:00-24:00"]
restday = ["00:00-24:00"]
holiday = ["00:00-24:00"]
quiet_hours = []
capacity = {{ agents = 20, handle_time = "6m" }}
sla = "24h"
replan_interval = "30s"
"""


# -- traffic -------------------------------------------------------------------------------------
class Traffic:
    """The transcript's events, copy after copy, rewritten as they are sent."""

    def __init__(self, shared: Path) -> None:
        self.base = event_packets(shared / "asterisk" / "captures" / "ami_full_scenario.raw", timestamps=True)
        self.visits_per_copy = sum(p.startswith(b"Event: QueueCallerJoin") for p in self.base)
        self.wanted: list[bytes] = []
        self.copy = 0
        self.index = 0
        self.visits = 0

    def select(self, sess: Any) -> None:
        """Keep what the daemon's session asked for (its Filter and event mask), as Asterisk would."""
        self.wanted = [p for p in self.base if sess.wants(p)]

    @property
    def events_per_second(self) -> float:
        return RATE / self.visits_per_copy * len(self.wanted)

    def take(self, n: int, now: float) -> bytes:
        out = []
        stamp = b"\r\nTimestamp: %.6f\r\n" % now
        for _ in range(n):
            p = self.wanted[self.index]
            k = self.copy
            p = _UID.sub(lambda m, k=k: b"%d." % (1795772000 + int(m.group(1)) + k * 1000), p)
            p = _NUM.sub(lambda m, k=k: b"139%05d%s" % (k % NUMBER_CYCLE, m.group(1)), p)
            out.append(_TS.sub(stamp, p, count=1))
            if p.startswith(b"Event: QueueCallerJoin"):
                self.visits += 1
            self.index += 1
            if self.index == len(self.wanted):
                self.index, self.copy = 0, self.copy + 1
        return b"".join(out)


def marker(n: int, now: float) -> tuple[bytes, bytes, str]:
    """A visit decided by its abandon: (join + hangup request, the abandon, its Uniqueid)."""
    uid = f"soak-{n}.1"
    number = f"1380013{n % 10000:04d}"
    common = (f"Privilege: agent,all\r\nChannel: PJSIP/trunk-{n:08x}\r\nCallerIDNum: {number}\r\n"
              f"CallerIDName: Marker {n}\r\nUniqueid: {uid}\r\nLinkedid: {uid}\r\nQueue: hotline\r\n")
    join = (f"Event: QueueCallerJoin\r\nTimestamp: {now - 8:.6f}\r\n{common}Position: 1\r\nCount: 1\r\n\r\n"
            f"Event: HangupRequest\r\nTimestamp: {now - 0.5:.6f}\r\nPrivilege: call,all\r\n"
            f"Channel: PJSIP/trunk-{n:08x}\r\nUniqueid: {uid}\r\nLinkedid: {uid}\r\nCause: 16\r\n\r\n")
    abandon = (f"Event: QueueCallerAbandon\r\nTimestamp: {now:.6f}\r\n{common}Position: 1\r\n"
               f"OriginalPosition: 1\r\nHoldTime: 8\r\n\r\n")
    return join.encode(), abandon.encode(), uid


# -- the daemon ----------------------------------------------------------------------------------
def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} for {pid}")


def _fds(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue  # closed meanwhile
    return out


def _percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))] if s else float("nan")


def work_the_list(work: Path, url: str, stop: threading.Event, closed: list[int], errors: list[str]) -> None:
    """Floating agents who keep up: every 10 s they claim what is due and close it as reached (through
    the queue's own claim and close, on the daemon's database), so the open backlog stays level, as
    on a staffed hotline, and RSS growth measures the daemon rather than an ever longer list."""
    from callback_queue.clock import SystemClock
    from callback_queue.store import Store
    from daemon.app import callback_queue
    from daemon.settings import load_settings

    store = Store(url)
    try:
        queue = callback_queue(load_settings(work / "callbackd.toml"), store, SystemClock())
        while not stop.wait(10):
            for cb in queue.claim("soak-agent", 500):
                queue.close(cb.id, "soak-agent", "reached")
                closed[0] += 1
    except Exception as exc:  # noqa: BLE001 - reported with the figures
        errors.append(f"the agents' claim/close failed: {type(exc).__name__}: {exc}")
    finally:
        store.dispose()


def soak(minutes: float, warmup: float, interval: float, store: str, shared: Path, work: Path,
         pg_url: str | None, say: Any, operators: bool = True) -> dict[str, Any]:
    import sqlalchemy as sa

    server = AmiTestServer().start()
    db_file = work / "state" / "callbackd.db"
    url = pg_url or f"sqlite:///{db_file}"
    store_line = f'url = "{pg_url}"' if pg_url else ""
    (work / "callbackd.toml").write_text(CONFIG.format(store=store_line, port=server.port))
    base = [PY, "-m", "daemon", "--config", str(work / "callbackd.toml")]
    subprocess.run([*base, "db", "upgrade"], cwd=work, check=True, capture_output=True, timeout=300)
    log_path = work / "daemon.log"
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen([*base, "run"], cwd=work, stdout=log, stderr=subprocess.STDOUT)
    engine = sa.create_engine(url, **({"connect_args": {"application_name": "callbackd-soak"}} if pg_url else {}))
    stop = threading.Event()
    traffic = Traffic(shared)
    samples: list[dict[str, Any]] = []
    errors: list[str] = []
    try:
        if not server.wait_logged_in(1, timeout=60):
            raise RuntimeError(f"the daemon did not log in to the AMI server: {log_path.read_text()[-500:]}")
        sess = server.logged_in()[0]
        time.sleep(1.0)  # its Filter and Events actions come right after the login
        traffic.select(sess)
        say(f"daemon pid {daemon.pid}; {RATE:.1f} visits/s = {traffic.events_per_second:.0f} events/s across "
            f"the socket ({len(traffic.wanted)} of the transcript's {len(traffic.base)} events pass the filter); "
            f"{minutes:g} min, warm-up {warmup:g} min, a sample every {interval:g} s")
        send_lock = threading.Lock()

        def generate() -> None:
            t0 = time.monotonic()
            sent = 0
            while not stop.is_set():
                due = int((time.monotonic() - t0) * traffic.events_per_second) - sent
                if due > 0:
                    blob = traffic.take(due, time.time())
                    with send_lock:
                        sess.write(blob)
                    sent += due
                if sess.closed:
                    errors.append("the daemon's AMI session closed")
                    return
                stop.wait(0.05)
            if traffic.index:  # finish the copy: every visit sent ends, so each one is an attempt
                with send_lock:
                    sess.write(traffic.take(len(traffic.wanted) - traffic.index, time.time()))

        gen = threading.Thread(target=generate, daemon=True)
        gen.start()
        closed = [0]
        if operators:
            ops = threading.Thread(target=work_the_list, args=(work, url, stop, closed, errors), daemon=True)
            ops.start()
        t_start = time.monotonic()
        end = t_start + minutes * 60
        n = 0
        lag_q = sa.text("SELECT 1 FROM attempts WHERE system = 'pbx' AND call_id = :uid")
        conns_q = sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                          "AND application_name <> 'callbackd-soak'")
        while time.monotonic() < end and daemon.poll() is None and not errors:
            n += 1
            join, abandon, uid = marker(n, time.time())
            with send_lock:
                sess.write(join)
            time.sleep(0.05)
            with send_lock:
                sess.write(abandon)
                sent_at = time.monotonic()
            lag = None
            with engine.connect() as c:
                while time.monotonic() - sent_at < 30:
                    if c.execute(lag_q, {"uid": uid}).first() is not None:
                        lag = time.monotonic() - sent_at
                        break
                    c.rollback()
                    time.sleep(0.02)
                if pg_url:
                    conns = int(c.execute(conns_q).scalar_one())
                else:
                    conns = -1
            fds = _fds(daemon.pid)
            if not pg_url:
                conns = sum(1 for f in fds if f == str(db_file))
            s = {"t": round(time.monotonic() - t_start, 1), "rss": _status(daemon.pid, "VmRSS"), "fds": len(fds),
                 "conns": conns, "lag": None if lag is None else round(lag, 4), "visits": traffic.visits}
            samples.append(s)
            say(f"  t={s['t']:7.1f} s  RSS {s['rss'] / MIB:6.1f} MiB  fds {s['fds']:3d}  conns {conns:2d}  "
                f"lag {'>30 s' if lag is None else f'{lag * 1000:6.0f} ms'}  visits sent {traffic.visits:,}")
            stop.wait(max(0.0, interval - (time.monotonic() - sent_at)))
        stop.set()
        gen.join(10)
        if daemon.poll() is not None:
            errors.append(f"the daemon exited ({daemon.returncode}): {log_path.read_text()[-500:]}")
        # every visit sent is one attempt, once undecided abandons settle (30 s without news)
        time.sleep(35)
        with engine.connect() as c:
            attempts = int(c.execute(sa.text("SELECT count(*) FROM attempts WHERE call_id NOT LIKE 'soak-%'"))
                           .scalar_one())
            callbacks = int(c.execute(sa.text("SELECT count(*) FROM callbacks")).scalar_one())
    finally:
        stop.set()
        engine.dispose()
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        server.stop()
    if not samples:
        raise RuntimeError(f"no samples: {errors}")
    warm = [s for s in samples if s["t"] <= warmup * 60] or samples[:1]
    after = [s for s in samples if s["t"] > warmup * 60]
    rss_warm, rss_end = warm[-1]["rss"], samples[-1]["rss"]
    lags = [s["lag"] if s["lag"] is not None else float("inf") for s in after]
    growth = (rss_end - rss_warm) / rss_warm * 100
    lag_max = max(lags) if lags else float("nan")
    ok = bool(after) and growth < 10 and lag_max < 1.0 and not errors and traffic.visits == attempts
    return {
        "benchmark": "soak", "store": store, "minutes": minutes, "warmup_minutes": warmup,
        "rate_visits_per_s": round(RATE, 2), "events_per_s": round(traffic.events_per_second, 1),
        "visits_sent": traffic.visits, "attempts_stored": attempts, "lost": traffic.visits - attempts,
        "callbacks_opened": callbacks, "callbacks_closed_by_agents": closed[0] if operators else None,
        "samples": len(samples),
        "rss_warm_mib": round(rss_warm / MIB, 1), "rss_end_mib": round(rss_end / MIB, 1),
        "rss_max_mib": round(max(s["rss"] for s in samples) / MIB, 1), "rss_growth_pct": round(growth, 2),
        "lag_max_s": round(lag_max, 4), "lag_p99_s": round(_percentile(lags, 0.99), 4),
        "lag_median_s": round(_percentile(lags, 0.5), 4),
        "fds_min": min(s["fds"] for s in samples), "fds_max": max(s["fds"] for s in samples),
        "db_conns_min": min(s["conns"] for s in samples), "db_conns_max": max(s["conns"] for s in samples),
        "errors": errors, "pass": ok,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="how long the traffic runs (default 30)")
    ap.add_argument("--warmup", type=float, default=None,
                    help="minutes before the RSS baseline is taken (default 5, or a third of a shorter run)")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between samples (default 5)")
    ap.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("CALLBACKD_SHARED") or ROOT.parent / "shared"),
                    help="the shared/ folder (default: $CALLBACKD_SHARED, else next to the repository)")
    ap.add_argument("--json", action="store_true", help="also print one JSON line with the figures (run_all.py)")
    ap.add_argument("--no-agents", dest="agents", action="store_false",
                    help="nobody works the list: the open backlog (and the daemon's working set) grows all along")
    args = ap.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else min(5.0, args.minutes / 3)
    if not 0 <= warmup < args.minutes:
        ap.error("--warmup must be shorter than --minutes")

    def say(msg: str) -> None:
        print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)

    with tempfile.TemporaryDirectory(prefix="callbackd-soak-") as tmp:
        work = Path(tmp)
        if args.store == "postgresql":
            with PgDatabase("callbackd_soak") as url:
                r = soak(args.minutes, warmup, args.interval, args.store, args.shared, work, url, say, args.agents)
        else:
            r = soak(args.minutes, warmup, args.interval, args.store, args.shared, work, None, say, args.agents)
    verdict = "PASS" if r["pass"] else "FAIL"
    print(f"soak ({r['store']}, {r['minutes']:g} min at {r['rate_visits_per_s']} visits/s = 10x Beijing's peak hour; "
          f"warm-up {r['warmup_minutes']:g} min): {r['visits_sent']:,} visits sent, {r['attempts_stored']:,} attempts "
          f"stored (lost {r['lost']}), {r['callbacks_opened']:,} callbacks opened"
          + (", nobody working the list" if r["callbacks_closed_by_agents"] is None
             else f", {r['callbacks_closed_by_agents']:,} closed by the agents"))
    print(f"  RSS  {r['rss_warm_mib']} MiB at the end of warm-up -> {r['rss_end_mib']} MiB at the end "
          f"({r['rss_growth_pct']:+.1f} %, max {r['rss_max_mib']} MiB)   bound: < +10 %")
    print(f"  lag  max {r['lag_max_s'] * 1000:.0f} ms, p99 {r['lag_p99_s'] * 1000:.0f} ms, median "
          f"{r['lag_median_s'] * 1000:.0f} ms after warm-up ({r['samples']} samples)   bound: < 1 s")
    print(f"  fds  {r['fds_min']}..{r['fds_max']}   DB connections {r['db_conns_min']}..{r['db_conns_max']}")
    for e in r["errors"]:
        print(f"  error: {e}")
    print(verdict)
    if args.json:
        print(json.dumps(r))
    return 0 if r["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
