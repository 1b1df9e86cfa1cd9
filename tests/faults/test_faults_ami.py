"""The real daemon (a subprocess) reads AMI events through a FaultProxy that stalls, cuts and delays the link.

After each fault the daemon reconnects by itself, and calls sent afterwards become attempts and a
callback. What the daemon logs for each fault is counted: one warning for the drop, at most one for
the failed reconnects that follow, one info for the reconnect - never one line per retry, never a
traceback.

Figures: the link's socket timeout is asterisk-ami's default, 3 s; the keep-alive Ping goes out after
0.5 s of quiet; reconnects back off from 0.2 s to a 1 s cap. A stall is held for 9 s, more than twice the
timeout: the Ping goes unanswered, and the reconnect attempts held by the stall fail too.
"""

from __future__ import annotations

import time
from pathlib import Path

import sqlalchemy as sa
from faultenv import LogReader, events, loud
from support.ami_server import AmiTestServer, Session, packet
from support.crash import Proc, wait_for
from support.faultproxy import FaultProxy

from callback_queue.store import Store

SOCKET_TIMEOUT = 3.0  # asterisk-ami's own default


def config(tmp: Path, url: str, ami_port: int) -> Path:
    cfg = tmp / "callbackd.toml"
    (tmp / "queue_log").touch()
    cfg.write_text(f"""
[daemon]
state_dir = "{tmp / 'state'}"
timezone = "UTC"
log_format = "json"
sweep_interval = "1s"

[store]
url = "{url}"

[detect]
threshold = 3
lookback = "24h"
min_wait_seconds = 5
default_region = "US"
internal_max_digits = 5

[http]
enabled = false

[sms]
enabled = false

# the PBX's queue_log (empty here) imports what an AMI outage misses: the gap is expected, not alarming
[sources.queue_log]
path = "{tmp / 'queue_log'}"
system = "pbx"

[[sources.ami]]
name = "pbx"
host = "127.0.0.1"
port = {ami_port}
username = "callbackd"
secret = "callbackd-secret"
socket_timeout = {SOCKET_TIMEOUT}
ping_interval = 0.5
backoff_initial = 0.2
backoff_max = 1.0
flush_interval = 0.05
""")
    return cfg


def calls(phase: int, *, start: int) -> tuple[str, list[str], list[bytes]]:
    """Three abandoned calls of one caller (a callback is owed): its number, the call ids, the packets."""
    number = f"202555{phase:04d}"
    ids, pkts = [], []
    for k in range(3):
        uid, t0 = f"{start}.{phase}{k}", start + phase * 600 + k * 120
        ids.append(uid)
        pkts += [packet(("Event", "QueueCallerJoin"), ("Privilege", "agent,all"), ("Timestamp", f"{t0}.0"),
                        ("CallerIDNum", number), ("Uniqueid", uid), ("Queue", "hotline"), ("Position", 1)),
                 packet(("Event", "HangupRequest"), ("Privilege", "call,all"), ("Timestamp", f"{t0 + 40}.0"),
                        ("Uniqueid", uid)),
                 packet(("Event", "QueueCallerAbandon"), ("Privilege", "agent,all"), ("Timestamp", f"{t0 + 40}.0"),
                        ("Uniqueid", uid), ("Queue", "hotline"), ("HoldTime", 40), ("Position", 1))]
    return "+1" + number, ids, pkts


def stored(url: str) -> tuple[set[str], dict[str, str], int]:
    """(attempt call ids, open callback state by number, dead letters)."""
    eng = sa.create_engine(url)
    try:
        with eng.connect() as c:
            ids = {r[0] for r in c.execute(sa.text("SELECT call_id FROM attempts"))}
            cbs = {r[0]: r[1] for r in c.execute(sa.text("SELECT number, state FROM callbacks"))}
            dead = c.execute(sa.text("SELECT COUNT(*) FROM dead_letters")).scalar()
    finally:
        eng.dispose()
    return ids, cbs, int(dead or 0)


def session(server: AmiTestServer) -> Session | None:
    live = server.logged_in()
    return live[-1] if len(live) == 1 and live[-1].filters else None


def test_the_daemon_rides_out_a_stall_a_cut_mid_packet_and_latency(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'faults.db'}"
    s = Store(url)
    s.upgrade()
    s.dispose()
    start = int(time.time()) - 6 * 3600
    with AmiTestServer() as server, FaultProxy("127.0.0.1", server.port, name="ami") as proxy:
        proc = Proc(config(tmp_path, url, proxy.port), "run", tag="daemon")
        log = LogReader(proc.err)
        try:
            assert proc.wait_started(), proc.stderr()[-3000:]
            assert server.wait_for(lambda: session(server) is not None, 20), proc.stderr()[-3000:]

            def deliver(phase: int, what: str) -> None:
                """Send one caller's three abandons; wait until the daemon stored them and opened a callback."""
                number, ids, pkts = calls(phase, start=start)
                server.send_events(pkts)
                ok = wait_for(lambda: set(ids) <= stored(url)[0] and number in stored(url)[1], 20)
                assert ok, f"{what}: calls sent after the fault were not stored: {stored(url)}\n{proc.stderr()[-3000:]}"

            deliver(0, "before any fault")
            assert proxy.connections == 1

            # 1. stall: the proxy forwards nothing and keeps every socket open; the keep-alive Ping
            #    notices, reconnect attempts are held too until the stall ends
            log.mark()
            old = session(server)
            proxy.stall()
            time.sleep(9.0)
            attempts_during_stall = proxy.accepted - 1
            proxy.resume()
            assert server.wait_for(lambda: session(server) not in (None, old), 20), proc.stderr()[-3000:]
            deliver(1, "stall")
            records, other = log.since()
            assert other == [], other
            assert attempts_during_stall >= 2, "the stall was too short to show retries"
            assert loud(records) in ([("warning", "ami.disconnected")],
                                     [("warning", "ami.disconnected"), ("warning", "ami.connect_failed")]), \
                loud(records)
            [drop] = events(records, "ami.disconnected")
            assert drop["error"].startswith("keep-alive Ping unanswered"), drop
            assert len(events(records, "ami.connected")) == 1

            # 2. cut mid-packet: the proxy forwards the first 30 bytes of an abandon, then closes everything
            log.mark()
            old = session(server)
            dead_before = stored(url)[2]
            proxy.cut(after=b"Event: QueueCallerAbandon", keep=30)
            _victim, _ids, victim_pkts = calls(2, start=start)
            server.send_events(victim_pkts[:3])   # one call of a caller; its abandon is what gets cut
            assert server.wait_for(lambda: session(server) not in (None, old), 20), proc.stderr()[-3000:]
            deliver(3, "cut mid-packet")
            records, other = log.since()
            assert other == [], other
            assert proxy.cuts == 1
            assert stored(url)[2] == dead_before + 1, "the cut-off packet is not in the dead letters"
            # the half packet is a dead letter (one warning), the drop is one more, the reconnect one info
            assert sorted(loud(records)) == [("warning", "ami.bad_packet"), ("warning", "ami.disconnected")], \
                loud(records)
            assert "mid-packet" in events(records, "ami.bad_packet")[0]["reason"]
            assert len(events(records, "ami.connected")) == 1

            # 3. latency: every chunk waits 0.5 s each way, well within the socket timeout: the link stays up,
            #    events still arrive, and nothing is worth a warning
            log.mark()
            connections = proxy.connections
            proxy.delay(0.5)
            deliver(4, "delay")
            time.sleep(SOCKET_TIMEOUT + 0.5)     # keep-alives go through the slow link too
            deliver(5, "delay")
            proxy.resume()
            records, other = log.since()
            assert other == [] and loud(records) == [], (other, loud(records))
            assert proxy.connections == connections and events(records, "ami.connected") == []

            # 4. refused: the PBX's port closes every new connection; the outage is one line however long
            log.mark()
            old = session(server)
            proxy.refuse()
            proxy.cut()
            time.sleep(3.0)
            refused = proxy.accepted
            proxy.resume()
            assert server.wait_for(lambda: session(server) not in (None, old), 20), proc.stderr()[-3000:]
            deliver(6, "refused")
            records, other = log.since()
            assert other == [], other
            assert refused - connections >= 3
            assert loud(records) == [("warning", "ami.disconnected"), ("warning", "ami.connect_failed")], \
                loud(records)
            assert len(events(records, "ami.connected")) == 1
            assert proc.p.poll() is None
        finally:
            rc = proc.stop()
    assert rc == 0, proc.stderr()[-3000:]
    ids, cbs, _ = stored(url)
    assert {n for n in cbs} == {calls(p, start=start)[0] for p in (0, 1, 3, 4, 5, 6)}
