"""AMI throughput: the full pipeline against the bare asterisk-ami client, in one run.

Events: the real Asterisk 22 transcript (captures/ami_full_scenario.raw, ~1,950 events of ~50
calls) repeated until at least --events events, each copy with its own Uniqueids (epochs shifted
by 1,000 s a copy), its own caller numbers and `Timestamp:` headers (timestampevents=yes).

The test AMI server (tests/support/ami_server.py) runs in a separate process so it does not share
our GIL; on the `BenchStream` action it streams the events to that session (after the session's
AMI Filter, as Asterisk applies it) and answers the action only after the last event, so the
answer proves every event before it was read.

Measured, one after the other on the same machine:
  bare      asterisk-ami's AMIClient with its defaults, a listener that only counts events
  pipeline  AmiLink (asterisk-ami underneath) -> reducer -> normalizer -> Ingestor (detection,
            SQLite store), as the daemon runs it, with the AMI Filter (Asterisk sends only what
            detection and dialing need)
  nofilter  the same pipeline told not to filter (every event crosses the socket and is parsed
            by asterisk-ami, irrelevant ones dropped in the client): the like-for-like comparison
Rates are events streamed by the server per second of wall time, from the stream request to the
last attempt committed. "Loses no event": every relevant event arrives, and every queue visit
(QueueCallerJoin) is one attempt in the store.

    .venv/bin/python bench/ami.py [--events 200000]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.ami_server import AmiTestServer, event_packets  # noqa: E402

_UID = re.compile(rb"\b1795772(\d{3})\.")
_NUM = re.compile(rb"\b5550(\d{3})\b")


def build_events(shared: Path, n: int) -> list[bytes]:
    base = event_packets(shared / "asterisk" / "captures" / "ami_full_scenario.raw", timestamps=True)
    out: list[bytes] = []
    k = 0
    while len(out) < n:
        for p in base:
            p = _UID.sub(lambda m, k=k: b"%d." % (1795772000 + int(m.group(1)) + k * 1000), p)
            p = _NUM.sub(lambda m, k=k: b"%04d%s" % (5550 + k % 4000, m.group(1)), p)
            out.append(p)
        k += 1
    return out


class BenchServer(AmiTestServer):
    def __init__(self, events: list[bytes]) -> None:
        super().__init__()
        self.events = events

    def _action(self, sess: Any, keys: dict[str, Any]) -> None:
        if str(keys.get("Action", "")).lower() != "benchstream":
            return super()._action(sess, keys)
        wanted = [p for p in self.events if sess.wants(p)] if sess.filters or sess.mask else self.events
        blob = b"".join(wanted)
        for i in range(0, len(blob), 1 << 20):
            sess.write(blob[i:i + (1 << 20)])
        self._reply(sess, keys.get("ActionID"), "Success", ("Streamed", len(wanted)))


def serve(events_file: str, port_q: Any, stop: Any) -> None:
    blob = Path(events_file).read_bytes()
    events = [p + b"\r\n\r\n" for p in blob.split(b"\r\n\r\n") if p]
    server = BenchServer(events).start()
    port_q.put(server.port)
    stop.wait()
    server.stop()


def run_bare(port: int, n: int) -> tuple[float, int]:
    from asterisk.ami import AMIClient, SimpleAction

    count = [0]
    client = AMIClient("127.0.0.1", port)
    client.add_event_listener(lambda event, source: count.__setitem__(0, count[0] + 1))
    assert not client.login("callbackd", "callbackd-secret").response.is_error()
    time.sleep(0.2)
    base = count[0]  # FullyBooted
    t0 = time.perf_counter()
    fut = client.send_action(SimpleAction("BenchStream"))
    deadline = time.monotonic() + 600
    while count[0] - base < n and time.monotonic() < deadline:
        time.sleep(0.005)
    elapsed = time.perf_counter() - t0
    got = count[0] - base
    fut.response  # noqa: B018 - wait for the answer too
    client.logoff()
    client.disconnect()
    return elapsed, got


def run_pipeline(port: int, events: list[bytes], *, use_filter: bool, tmp: Path) -> dict[str, Any]:
    from callback_queue.clock import FakeClock
    from callback_queue.ingest import Ingestor
    from callback_queue.store import Store
    from daemon.ami.events import RELEVANT
    from daemon.ami.source import AmiSource, make_link
    from daemon.app import detect_rules, normalizer
    from daemon.logs import configure
    from daemon.settings import Settings

    configure("warning", "console", stream=sys.stderr)
    db = tmp / f"bench-{'filter' if use_filter else 'nofilter'}.db"
    store = Store(f"sqlite:///{db}")
    store.upgrade()
    s = Settings.model_validate({
        "daemon": {"timezone": "UTC"},
        "detect": {"default_region": "US", "internal_max_digits": 5},
        "sources": {"ami": [{"name": "pbx", "port": port, "username": "callbackd", "secret": "callbackd-secret",
                             "filter": use_filter, "socket_timeout": 30}]},
    })
    last = max(float(m.group(1)) for p in events[-2000:] for m in [re.search(rb"Timestamp: ([0-9.]+)", p)] if m)
    clock = FakeClock(datetime.fromtimestamp(last + 60, UTC))  # "now" = just after the last event
    link = make_link(s.sources.ami[0])
    received = [0]
    link.subscribe(RELEVANT, lambda name, keys, at: received.__setitem__(0, received[0] + 1))
    src = AmiSource(s.sources.ami[0], link, Ingestor(store, clock, detect_rules(s)), normalizer(s), clock=clock)
    src.start()
    assert link.wait_connected(10)
    t0 = time.perf_counter()
    answer = link.action("BenchStream", {}, timeout=900)
    while True:  # the last events may still wait for the flush thread
        if src.flush() == 0 and not src._events:
            break
    elapsed = time.perf_counter() - t0
    src.stop()
    import sqlalchemy as sa

    with store.read() as c:
        stored = c.execute(sa.text("SELECT count(*) FROM attempts")).scalar()
        opened = c.execute(sa.text("SELECT count(*) FROM callbacks")).scalar()
    store.dispose()
    from daemon.ami.events import filter_regexes

    regexes = [re.compile(r) for r in filter_regexes()] if use_filter else []
    relevant = sum(1 for p in events if p[7:p.index(b"\r\n")].decode().lower() in RELEVANT
                   and (not regexes or any(r.search(p.decode("utf-8", "replace")) for r in regexes)))
    joins = sum(1 for p in events if p.startswith(b"Event: QueueCallerJoin"))
    return {"elapsed": elapsed, "streamed": int(answer.get("streamed", 0)), "received": received[0],
            "relevant": relevant, "attempts": stored, "joins": joins, "callbacks": opened,
            "dead": src.stats["dead_letters"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--shared", type=Path, default=Path(os.environ.get("CALLBACKD_SHARED") or ROOT.parent / "shared"),
                    help="the shared/ folder (default: $CALLBACKD_SHARED, else next to the repository)")
    ap.add_argument("--json", action="store_true", help="also print one JSON line with the figures (run_all.py)")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # asterisk-ami's notifyAll (bare client)
    events = build_events(args.shared, args.events)
    n = len(events)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "events.raw").write_bytes(b"".join(events))
        ctx = mp.get_context("spawn")
        port_q, stop = ctx.Queue(), ctx.Event()
        proc = ctx.Process(target=serve, args=(str(tmp / "events.raw"), port_q, stop), daemon=True)
        proc.start()
        port = port_q.get(timeout=30)
        try:
            bare_s, bare_n = run_bare(port, n)
            full = run_pipeline(port, events, use_filter=True, tmp=tmp)
            raw = run_pipeline(port, events, use_filter=False, tmp=tmp)
        finally:
            stop.set()
            proc.join(10)
    bare_rate = n / bare_s
    base_n = len(event_packets(args.shared / "asterisk" / "captures" / "ami_full_scenario.raw"))
    print(f"events streamed: {n:,} (the captured run's {base_n:,} events, {n / base_n:.0f} times), "
          f"{sum(p.startswith(b'Event: QueueCallerJoin') for p in events):,} queue visits")
    print(f"bare asterisk-ami client : {bare_n:,} events in {bare_s:.2f} s = {bare_rate:,.0f} events/s")
    for label, r in (("pipeline (AMI Filter on)", full), ("pipeline (no filter)     ", raw)):
        rate = n / r["elapsed"]
        lost = r["relevant"] - r["received"]
        print(f"{label}: {n:,} events in {r['elapsed']:.2f} s = {rate:,.0f} events/s "
              f"({rate / bare_rate:.0%} of bare); {r['streamed']:,} crossed the socket; "
              f"relevant received {r['received']:,}/{r['relevant']:,} (lost {lost}); "
              f"attempts stored {r['attempts']:,}/{r['joins']:,} visits; callbacks opened {r['callbacks']:,}; "
              f"dead letters {r['dead']}")
    ok = all(r["received"] == r["relevant"] and r["attempts"] == r["joins"] for r in (full, raw)) and bare_n == n
    print("no event lost" if ok else "EVENTS LOST")
    if args.json:
        import json

        print(json.dumps({
            "benchmark": "ami", "events": n, "bare_rate": round(bare_rate), "target_ratio": 0.5,
            # the fair comparison: every event crosses the socket, as for the bare client
            "ratio": round(n / raw["elapsed"] / bare_rate, 3),
            "filtered_ratio": round(n / full["elapsed"] / bare_rate, 3),
            "lost": (raw["relevant"] - raw["received"]) + (full["relevant"] - full["received"]),
        }))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
