"""API benchmark on PostgreSQL with 1,000,000 callbacks: "list 50 due" and "claim next" through the
HTTP API (16 concurrent clients), and in the same run the bare SQL claim statement (16 connections).

    .venv/bin/python bench/api.py [--callbacks 1000000] [--clients 16] [--requests 100] [--pg ADMIN_URL]

A fresh database is created (and dropped at the end unless --keep); 3% of the callbacks are open,
half of those due now. The server is the real app (uvicorn, one process) started in a subprocess
so that clients and server do not share a GIL. Targets: API p99 < 50 ms and within 5x the bare
statement's p99.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

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


def serve(url: str, port_file: str) -> None:
    """The server process: the real app over the bench database."""
    from callback_queue.clock import SystemClock
    from callback_queue.queue import CallbackQueue
    from callback_queue.store import Store
    from daemon.http import api, console, metrics  # noqa: F401  (register their routes)
    from daemon.http.app import HttpServer, Services, create_app
    from daemon.settings import Settings

    store = Store(url, pool_size=16)
    clock = SystemClock()
    svc = Services(settings=Settings(), store=store, clock=clock, queue=CallbackQueue(store, clock))
    server = HttpServer(create_app(svc), "127.0.0.1", 0)
    server.start()
    Path(port_file).write_text(str(server.port))
    threading.Event().wait()


async def run_clients(base: str, token: str, clients: int, requests: int, method: str, path: str,
                      body: dict | None) -> tuple[list[float], dict[int, int]]:
    import httpx2 as httpx

    lat: list[float] = []
    codes: dict[int, int] = {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token}"}, limits=limits,
                                 timeout=30) as client:
        async def one() -> None:
            for _ in range(requests):
                t = time.perf_counter()
                r = await client.request(method, path, json=body)
                lat.append(time.perf_counter() - t)
                codes[r.status_code] = codes.get(r.status_code, 0) + 1

        await asyncio.gather(*(one() for _ in range(clients)))
    return lat, codes


def bare_claims(url: str, clients: int, requests: int) -> list[float]:
    import psycopg
    import sqlalchemy as sa

    dsn = sa.engine.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    lat: list[float] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for _ in range(requests):
                now = datetime.now(UTC)
                t = time.perf_counter()
                params = {"op": f"bare{k}", "until": now + timedelta(minutes=15), "now": now}
                conn.execute(BARE_CLAIM, params).fetchall()
                with lock:
                    lat.append(time.perf_counter() - t)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return lat


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--callbacks", type=int, default=1_000_000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=100, help="per client and measurement")
    ap.add_argument("--keep", action="store_true", help="keep the database")
    ap.add_argument("--json", action="store_true", help="also print one JSON line with the figures (run_all.py)")
    ap.add_argument("--serve", nargs=2, metavar=("URL", "PORT_FILE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(*args.serve)
        return 0

    from callback_queue.clock import SystemClock
    from callback_queue.store import Store
    from callback_queue.users import Users

    url = make_db(args.callbacks)
    store = Store(url)
    token = Users(store, SystemClock()).add("bench", "operator")[1]
    store.dispose()
    port_file = Path(f"/tmp/callbackd-bench-{os.getpid()}.port")
    proc = subprocess.Popen([sys.executable, __file__, "--serve", url, str(port_file)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.1)
        base = f"http://127.0.0.1:{port_file.read_text()}"
        c, n = args.clients, args.requests
        asyncio.run(run_clients(base, token, c, 5, "GET", "/api/callbacks?due=true&limit=50", None))  # warm-up
        results = {}
        t = time.perf_counter()
        results["list 50 due"] = asyncio.run(run_clients(base, token, c, n, "GET", "/api/callbacks?due=true&limit=50",
                                                         None)), time.perf_counter() - t
        t = time.perf_counter()
        results["claim next"] = asyncio.run(run_clients(base, token, c, n, "POST", "/api/callbacks/claim",
                                                        {"count": 1})), time.perf_counter() - t
        bare_claims(url, c, 5)  # warm-up
        t = time.perf_counter()
        bare = bare_claims(url, c, n)
        bare_wall = time.perf_counter() - t
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        port_file.unlink(missing_ok=True)
        if not args.keep:
            drop_db(url)
    cpu = os.cpu_count()
    load = os.getloadavg()
    print(f"\n{args.callbacks:,} callbacks on PostgreSQL; {c} concurrent clients x {n} requests; "
          f"{cpu} CPUs, load average {load[0]:.1f} (the server is one uvicorn process)")
    print(f"{'':28} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}  status codes")
    for name, ((lat, codes), wall) in results.items():
        print(f"API {name:24} {pct(lat, 50):8.1f} {pct(lat, 99):8.1f} {len(lat) / wall:8.0f}  {codes}")
    print(f"{'bare SQL claim statement':28} {pct(bare, 50):8.1f} {pct(bare, 99):8.1f} {len(bare) / bare_wall:8.0f}")
    worst = max(pct(results[k][0][0], 99) for k in results)
    ratio = pct(results["claim next"][0][0], 99) / max(pct(bare, 99), 1e-9)
    print(f"\ntarget: API p99 < 50 ms -> worst {worst:.1f} ms ({'met' if worst < 50 else 'NOT met'}); "
          f"claim p99 within 5x bare -> {ratio:.1f}x ({'met' if ratio <= 5 else 'NOT met'})")
    if args.json:
        import json

        out = {"benchmark": "api", "callbacks": args.callbacks, "clients": c, "requests": n}
        for name, ((lat, _codes), _wall) in results.items():
            key = name.replace(" ", "_")
            out[f"{key}_p50_ms"], out[f"{key}_p99_ms"] = round(pct(lat, 50), 2), round(pct(lat, 99), 2)
        out["bare_claim_p50_ms"], out["bare_claim_p99_ms"] = round(pct(bare, 50), 2), round(pct(bare, 99), 2)
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
