"""API benchmark on PostgreSQL with 1,000,000 callbacks: "list 50 due" and "claim next" through the
HTTP API (16 concurrent clients), and in the same run the bare SQL claim statement (16 connections).

    .venv/bin/python bench/api.py [--callbacks 1000000] [--clients 16] [--requests 100] [--keep | --db URL]
                                  [--httpx] [--python-json] [--profile FILE] [--json]
                                  (PostgreSQL admin URL: $CALLBACKD_TEST_PG)

A fresh database is created (and dropped at the end unless --keep, which prints its URL for --db); 3% of
the callbacks are open, two thirds of those due now. A kept database is reused as it was left, but the
claims earlier runs made are handed back first (otherwise each run would shrink the due queue).

The server is the real app (uvicorn, one process, the daemon's default pool size) started in a
subprocess so that clients and server do not share a GIL. The clients are a
minimal HTTP/1.1 keep-alive client on asyncio streams (httpx cost more CPU per request than the server's
own HTTP layer: on 2 cores the client's CPU is taken from the server). Targets: API p99 < 50 ms and
within 5x the bare statement's p99.

Besides latencies it prints the CPU each request costs in the server, the client and PostgreSQL
(its backends for the bench database, from /proc), and what that allows: with C cores a closed loop
of N clients cannot complete more than C / (CPU per request) requests a second, so no request waits
less than N x (CPU per request) / C on average. Other processes' load (the load average is printed)
takes from the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PG_ADMIN = os.environ.get("CALLBACKD_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

LOAD = """
INSERT INTO callbacks (kind, number, state, priority, failures, episode_start, triggered_at, last_failed_at,
                       due_at, dial_attempts, outcome, closed_at, created_at, updated_at)
SELECT 'recall', '+86138' || lpad(i::text, 8, '0'),
       CASE WHEN i % 100 < 97 THEN (ARRAY['reached','unreachable','cancelled','evaluated'])[1 + i % 4]
            WHEN i % 2 = 0 THEN 'pending' ELSE 'retry_wait' END,
       (i % 7 = 0)::int, 3 + i % 5,
       t, t, t,
       CASE WHEN i % 100 >= 97 AND i % 3 = 0 THEN now() + interval '2 hours' ELSE t END,
       CASE WHEN i % 100 < 97 THEN 1 ELSE 0 END,
       CASE WHEN i % 100 < 97 THEN 'reached' END,
       CASE WHEN i % 100 < 97 THEN t + interval '1 hour' END, t, t
FROM (SELECT i, now() - (i % 525600) * interval '1 minute' AS t FROM generate_series(1, :n) AS i) s
"""

BARE_CLAIM = """
UPDATE callbacks SET state = 'dialing', claimed_by = %(op)s, lease_until = %(until)s, updated_at = %(now)s
WHERE id IN (SELECT id FROM callbacks WHERE state IN ('pending', 'scheduled', 'retry_wait') AND due_at <= %(now)s
             ORDER BY priority DESC, failures DESC, triggered_at ASC, id ASC LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING *
"""


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] * 1000


def make_db(n: int) -> str:
    import sqlalchemy as sa

    from callback_queue.store import Store

    name = f"callbackd_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = sa.engine.make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
    store = Store(url)
    store.upgrade()
    t = time.perf_counter()
    with store.engine.begin() as conn:
        conn.execute(sa.text(LOAD), {"n": n})
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE callbacks"))
        counts = dict(conn.execute(sa.text("SELECT state, count(*) FROM callbacks GROUP BY state")).all())
    store.dispose()
    print(f"loaded {n:,} callbacks in {time.perf_counter() - t:.1f}s: {counts}", flush=True)
    return url


def drop_db(url: str) -> None:
    import sqlalchemy as sa

    name = sa.engine.make_url(url).database
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def hand_back_claims(url: str) -> int:
    """A kept database: the operators' claims earlier runs made go back to the queue, as a sweep would."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        n = conn.execute(sa.text(
            "UPDATE callbacks SET state = CASE WHEN dial_attempts = 0 THEN 'pending' ELSE 'retry_wait' END, "
            "claimed_by = NULL, lease_until = NULL WHERE state = 'dialing' AND dialer IS NULL")).rowcount
    engine.dispose()
    return n


def profiled(out: str) -> None:
    """--profile: every thread the server starts from now on (uvicorn's, the handler pool's) runs under its
    own cProfile, timed in CPU seconds of that thread (not wall time: on a loaded machine that is mostly
    waiting); on SIGTERM their statistics are merged into `out` (pstats: python -m pstats FILE)."""
    import cProfile
    import pstats
    import signal

    profiles: list[cProfile.Profile] = []
    inner = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]

    def bootstrap_profiled(self: threading.Thread) -> None:
        prof = cProfile.Profile(time.thread_time)
        profiles.append(prof)
        prof.enable()
        inner(self)

    threading.Thread._bootstrap_inner = bootstrap_profiled  # type: ignore[attr-defined]

    def dump(signum: int, frame: Any) -> None:
        stats = None
        for prof in profiles:
            prof.create_stats()
            if prof.stats:  # type: ignore[attr-defined]
                stats = pstats.Stats(prof) if stats is None else stats.add(prof)
        if stats is not None:
            stats.dump_stats(out)
        os._exit(0)

    signal.signal(signal.SIGTERM, dump)


def serve(url: str, port_file: str, python_json: bool = False) -> None:
    """The server process: the real app over the bench database, configured as the daemon is by default
    (`python_json`: the queue's JSON written in Python, as before PostgreSQL wrote it)."""
    from callback_queue.clock import SystemClock
    from daemon.app import callback_queue, open_store
    from daemon.http import api, console, metrics  # noqa: F401  (register their routes)
    from daemon.http.app import HttpServer, Services, create_app
    from daemon.settings import Settings

    settings = Settings.model_validate({"store": {"url": url}})
    store = open_store(settings)
    clock = SystemClock()
    svc = Services(settings=settings, store=store, clock=clock, queue=callback_queue(settings, store, clock))
    svc.queue.json_in_sql = not python_json
    server = HttpServer(create_app(svc), "127.0.0.1", 0)
    server.start()
    Path(port_file).write_text(str(server.port))
    threading.Event().wait()


class Client:
    """One keep-alive HTTP/1.1 connection: a request is a prebuilt byte string, the answer is read by
    Content-Length (what uvicorn sends for JSON). A fraction of httpx's CPU per request."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    @staticmethod
    def request(method: str, path: str, token: str, body: dict | None) -> bytes:
        data = json.dumps(body).encode() if body is not None else b""
        head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")
        return head.encode() + data

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = next((int(v) for k, _, v in (ln.partition(b":") for ln in lines[1:])
                       if k.strip().lower() == b"content-length"), None)
        if length is None:
            raise RuntimeError(f"no Content-Length in the answer: {head!r}")
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def run_clients(port: int, token: str, clients: int, requests: int, method: str, path: str,
                      body: dict | None, check: Any = None) -> tuple[list[float], dict[int, int]]:
    """`clients` connections, each sending `requests` requests one after the other (a closed loop)."""
    lat: list[float] = []
    codes: dict[int, int] = {}
    raw = Client.request(method, path, token, body)
    conns = [await Client.connect(port) for _ in range(clients)]

    async def one(c: Client) -> None:
        for _ in range(requests):
            t = time.perf_counter()
            status, answer = await c.send(raw)
            lat.append(time.perf_counter() - t)
            codes[status] = codes.get(status, 0) + 1
            if check is not None:
                check(status, answer)

    try:
        await asyncio.gather(*(one(c) for c in conns))
    finally:
        for c in conns:
            c.close()
    return lat, codes


def expect_items(n: int) -> Any:
    """A check for the warm-up: the route answers 200 with `n` items (so the figures are of real work)."""
    def check(status: int, answer: bytes) -> None:
        got = json.loads(answer)
        if status != 200 or len(got.get("items", ())) != n:
            raise SystemExit(f"the bench route answered {status} with {len(got.get('items', ()))} items, not {n}: "
                             f"{answer[:300]!r}")
    return check


class CpuMeter:
    """CPU seconds used by this process, the server process and PostgreSQL's backends for the bench database."""

    def __init__(self, url: str, server_pid: int) -> None:
        import psycopg
        import sqlalchemy as sa

        self.server_pid = server_pid
        self.db = sa.engine.make_url(url).database
        admin = sa.engine.make_url(PG_ADMIN).set(drivername="postgresql").render_as_string(hide_password=False)
        self.admin = psycopg.connect(admin, autocommit=True)

    def _backends(self) -> dict[int, float]:
        pids = [r[0] for r in self.admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND "
                                                 "backend_type = 'client backend'", (self.db,)).fetchall()]
        return {pid: cpu for pid in pids if (cpu := proc_cpu(pid)) is not None}

    def snapshot(self) -> tuple[float, float, dict[int, float]]:
        me = resource.getrusage(resource.RUSAGE_SELF)
        return me.ru_utime + me.ru_stime, proc_cpu(self.server_pid) or 0.0, self._backends()

    @staticmethod
    def used(before: tuple[float, float, dict[int, float]],
             after: tuple[float, float, dict[int, float]]) -> tuple[float, ...]:
        """(client, server, PostgreSQL) CPU seconds between two snapshots (backends that ended in between
        are not counted: the pool keeps its connections, so there are none)."""
        pg = sum(cpu - before[2].get(pid, 0.0) for pid, cpu in after[2].items())
        return after[0] - before[0], after[1] - before[1], pg

    def close(self) -> None:
        self.admin.close()


def proc_cpu(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bare_claims(url: str, clients: int, requests: int, meter: CpuMeter | None = None) -> tuple[list[float], float,
                                                                                             tuple[float, ...]]:
    """`clients` threads, each on its own connection, running the bare claim statement `requests` times.
    Returns the latencies, the wall time and (with a meter) the CPU used while they ran."""
    import psycopg
    import sqlalchemy as sa

    dsn = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    lat: list[float] = []
    lock = threading.Lock()
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(clients)]  # connected before the clock starts

    def worker(k: int) -> None:
        conn = conns[k]
        for _ in range(requests):
            now = datetime.now(UTC)
            t = time.perf_counter()
            params = {"op": f"bare{k}", "until": now + timedelta(minutes=15), "now": now}
            conn.execute(BARE_CLAIM, params).fetchall()
            with lock:
                lat.append(time.perf_counter() - t)

    try:
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
        before, t0 = (meter.snapshot() if meter else None), time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t0
        used = meter.used(before, meter.snapshot()) if meter and before else (0.0, 0.0, 0.0)
    finally:
        for conn in conns:
            conn.close()
    return lat, wall, used


async def run_httpx(port: int, token: str, clients: int, requests: int, method: str, path: str,
                    body: dict | None, check: Any = None) -> tuple[list[float], dict[int, int]]:
    """The same closed loop through httpx (--httpx: to compare with figures taken with it)."""
    import httpx2 as httpx

    lat: list[float] = []
    codes: dict[int, int] = {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"},
                                 limits=limits, timeout=30) as client:
        async def one() -> None:
            for _ in range(requests):
                t = time.perf_counter()
                r = await client.request(method, path, json=body)
                lat.append(time.perf_counter() - t)
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
                if check is not None:
                    check(r.status_code, r.content)

        await asyncio.gather(*(one() for _ in range(clients)))
    return lat, codes


LIST = ("GET", "/api/callbacks?due=true&limit=50", None)
CLAIM = ("POST", "/api/callbacks/claim", {"count": 1})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--callbacks", type=int, default=1_000_000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=100, help="per client and measurement")
    ap.add_argument("--keep", action="store_true", help="keep the database")
    ap.add_argument("--db", metavar="URL", help="use this database (made by an earlier --keep run) instead")
    ap.add_argument("--httpx", action="store_true", help="clients through httpx instead of the minimal client")
    ap.add_argument("--python-json", action="store_true",
                    help="the server writes the JSON in Python (Callback.as_json), not in PostgreSQL: the figures "
                         "to compare with")
    ap.add_argument("--profile", metavar="FILE", help="profile the server's threads (cProfile) into FILE")
    ap.add_argument("--json", action="store_true", help="also print one JSON line with the figures (run_all.py)")
    ap.add_argument("--serve", nargs=2, metavar=("URL", "PORT_FILE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        if args.profile:
            profiled(args.profile)
        serve(*args.serve, python_json=args.python_json)
        return 0

    from callback_queue.clock import SystemClock
    from callback_queue.store import Store
    from callback_queue.users import Users

    url = args.db or make_db(args.callbacks)
    if args.keep:
        print(f"the database is kept: --db {url}", flush=True)
    if args.db and (n := hand_back_claims(url)):
        print(f"{n:,} claims of earlier runs handed back", flush=True)
    store = Store(url)
    store.upgrade()  # a kept database from an older revision gets this one's indexes
    token = Users(store, SystemClock()).add(f"bench-{uuid.uuid4().hex[:6]}", "operator")[1]
    store.dispose()
    load_before = os.getloadavg()[0]
    port_file = Path(f"/tmp/callbackd-bench-{os.getpid()}.port")
    proc = subprocess.Popen([sys.executable, __file__, "--serve", url, str(port_file),
                             *(["--python-json"] if args.python_json else []),
                             *(["--profile", args.profile] if args.profile else [])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    meter: CpuMeter | None = None
    client = run_httpx if args.httpx else run_clients
    results: dict[str, tuple[list[float], dict[int, int], float, tuple[float, ...]]] = {}
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.1)
        port = int(port_file.read_text())
        meter = CpuMeter(url, proc.pid)
        c, n = args.clients, args.requests
        for name, (method, path, body), items in (("list 50 due", LIST, 50), ("claim next", CLAIM, 1)):
            asyncio.run(client(port, token, c, 5, method, path, body, expect_items(items)))  # warm-up, checked
            before, t = meter.snapshot(), time.perf_counter()
            lat, codes = asyncio.run(client(port, token, c, n, method, path, body))
            wall = time.perf_counter() - t
            results[name] = lat, codes, wall, meter.used(before, meter.snapshot())
        bare_claims(url, c, 5)  # warm-up
        bare, bare_wall, bare_cpu = bare_claims(url, c, n, meter)
    finally:
        if meter is not None:
            meter.close()
        proc.terminate()
        proc.wait(timeout=10)
        port_file.unlink(missing_ok=True)
        if not args.keep and not args.db:
            drop_db(url)
    cpus = os.cpu_count() or 1
    load = os.getloadavg()[0]
    print(f"\n{args.callbacks:,} callbacks on PostgreSQL; {c} concurrent clients x {n} requests "
          f"({'httpx' if args.httpx else 'minimal HTTP client'}; JSON written by "
          f"{'Python' if args.python_json else 'PostgreSQL'}); {cpus} CPUs, load average {load_before:.1f} "
          f"before, {load:.1f} after (the server is one uvicorn process)")
    print(f"{'':28} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>7} {'CPU ms per request: server':>27} {'client':>7} "
          f"{'pg':>6} {'total':>6}  status codes")

    def cpu_cols(used: tuple[float, ...], k: int) -> str:
        client_s, server_s, pg_s = (1000 * x / k for x in used)
        return f"{server_s:27.2f} {client_s:7.2f} {pg_s:6.2f} {server_s + client_s + pg_s:6.2f}"

    for name, (lat, codes, wall, used) in results.items():
        print(f"API {name:24} {pct(lat, 50):8.1f} {pct(lat, 99):8.1f} {len(lat) / wall:7.0f} {cpu_cols(used, len(lat))}"
              f"  {codes}")
    print(f"{'bare SQL claim statement':28} {pct(bare, 50):8.1f} {pct(bare, 99):8.1f} {len(bare) / bare_wall:7.0f} "
          f"{cpu_cols(bare_cpu, len(bare))}")
    print(f"\nwhat the CPU allows on {cpus} cores (nothing else running): at most cores / CPU per request requests a "
          f"second; {c} clients in a closed loop then wait at least {c} x CPU per request / cores on average")
    for name, (lat, _codes, _wall, used) in results.items():
        per = sum(used) / len(lat)
        server = used[1] / len(lat)
        print(f"  API {name:24} {per * 1000:5.2f} ms -> <= {cpus / per:5.0f} req/s, mean wait >= "
              f"{c * per / cpus * 1000:5.1f} ms (one server process: <= {1 / server:5.0f} req/s, "
              f">= {c * server * 1000:5.1f} ms)")
    bare_p99 = max(pct(bare, 99), 1e-9)
    worst = max(pct(r[0], 99) for r in results.values())
    ratios = {name: pct(r[0], 99) / bare_p99 for name, r in results.items()}
    print(f"\ntarget: API p99 < 50 ms -> worst {worst:.1f} ms ({'met' if worst < 50 else 'NOT met'}); "
          f"p99 within 5x the bare statement's -> "
          + ", ".join(f"{name} {r:.1f}x ({'met' if r <= 5 else 'NOT met'})" for name, r in ratios.items()))
    if args.json:
        out: dict[str, Any] = {"benchmark": "api", "callbacks": args.callbacks, "clients": c, "requests": n,
                               "load_average": round(load, 2)}
        for name, (lat, _codes, _wall, used) in results.items():
            key = name.replace(" ", "_")
            out[f"{key}_p50_ms"], out[f"{key}_p99_ms"] = round(pct(lat, 50), 2), round(pct(lat, 99), 2)
            out[f"{key}_cpu_ms_per_request"] = round(1000 * sum(used) / len(lat), 3)
        out["bare_claim_p50_ms"], out["bare_claim_p99_ms"] = round(pct(bare, 50), 2), round(pct(bare, 99), 2)
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
