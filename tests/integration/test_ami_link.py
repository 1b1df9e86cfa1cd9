"""Connection care with the real asterisk-ami client underneath (daemon/ami/client.py).

Figures: asterisk-ami's socket timeout is 3 s, so an idle link dies after 3 s. These tests run the
same client with the timeout shortened to 0.3 s (ping interval 0.1 s, a third of it) and keep the
link idle for 6 s: 20x the timeout, as 60 s is 20x the library's default 3 s.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
import structlog
from asterisk.ami import AMIClient
from support.ami_env import (
    CAPTURES,
    ami_settings,
    attempts,
    callbacks,
    dead_letters,
    drain,
    import_queue_log,
    running_source,
    wipe,
)
from support.ami_server import AmiTestServer, event_packets, packet

from callback_queue.clock import FakeClock
from callback_queue.ingest import Ingestor
from callback_queue.store import Store
from daemon.ami.source import make_link
from daemon.app import detect_rules, queue_log_parser
from daemon.app import normalizer as make_normalizer
from daemon.sources.pipeline import TailRunner

AFTER_CAPTURE = datetime(2026, 11, 27, 9, 44, tzinfo=UTC)


@pytest.fixture
def db(tmp_path) -> Store:
    """Connection care is about the link, not the database: SQLite is enough here."""
    s = Store(f"sqlite:///{tmp_path / 'ami.db'}")
    s.upgrade()
    yield s
    s.dispose()


FAST = {"socket_timeout": 0.3, "ping_interval": 0.1, "backoff_initial": 0.2, "backoff_max": 0.8}


def test_the_bare_library_loses_an_idle_link() -> None:
    """The gap being closed: asterisk-ami alone, idle longer than its socket timeout, is gone."""
    with AmiTestServer() as server:
        gone = threading.Event()
        errors: list[BaseException | None] = []
        client = AMIClient("127.0.0.1", server.port, timeout=0.3)
        client.add_listener(on_disconnect=lambda source, error: (errors.append(error), gone.set()))
        client.connect()
        assert gone.wait(3), "the library kept an idle link up by itself"
        assert isinstance(errors[0], TimeoutError)  # its reader died on the socket timeout
        assert server.connections == 1
        client.disconnect()


def test_idle_link_stays_up(db: Store) -> None:
    clock = FakeClock(AFTER_CAPTURE)
    with AmiTestServer() as server:
        s = ami_settings(server.port, extra=FAST)
        with running_source(s, db, clock) as src:
            assert server.wait_logged_in()
            time.sleep(6.0)  # 20x the socket timeout without a single event
            assert src.link.connected
            assert server.connections == 1 and src.link.connects == 1
            pings = sum(1 for a in server.actions if a.get("Action") == "Ping")
            assert pings >= 20
            server.replay_file(CAPTURES / "steps" / "02_inbound_abandon.ami.raw", timestamps=True)
            drain(src)
        assert [(r["call_id"], r["reason"]) for r in attempts(db)] == [("1795772431.3", "abandon")]


@pytest.mark.slow
def test_idle_link_stays_up_for_60_s_with_the_librarys_own_timeout(db: Store) -> None:
    """The issue's figure, literally: 60 s without a single event, asterisk-ami's 3-second socket
    timeout, the default keep-alive. (The test above shows the same at 20x speed.)"""
    clock = FakeClock(AFTER_CAPTURE)
    with AmiTestServer() as server:
        s = ami_settings(server.port)   # socket_timeout 3.0, ping_interval 1.0: the defaults
        assert s.sources.ami[0].socket_timeout == 3.0
        with running_source(s, db, clock) as src:
            assert server.wait_logged_in()
            time.sleep(60.0)
            assert src.link.connected
            assert server.connections == 1 and src.link.connects == 1
            assert sum(1 for a in server.actions if a.get("Action") == "Ping") >= 40


def test_dropped_mid_packet_reconnects_and_the_queue_log_fills_the_gap(db: Store) -> None:
    clock = FakeClock(AFTER_CAPTURE)
    step = "22_mixed_story"
    qlog = CAPTURES / "steps" / f"{step}.queue_log"
    pkts = event_packets(CAPTURES / "steps" / f"{step}.ami.raw", timestamps=True)
    # the outage: from the 3rd QueueCallerJoin to the 6th QueueCallerAbandon nothing reaches us
    joins = [i for i, p in enumerate(pkts) if p.startswith(b"Event: QueueCallerJoin")]
    abandons = [i for i, p in enumerate(pkts) if p.startswith(b"Event: QueueCallerAbandon")]
    cut, resume = joins[2], abandons[5] + 1
    with AmiTestServer() as server:
        s = ami_settings(server.port, queue_log=qlog, extra=FAST)
        with structlog.testing.capture_logs() as logs, running_source(s, db, clock,
                                                                        backfilled_by=["queue_log:pbx"]) as src:
            server.wait_logged_in()
            server.send_events(pkts[:cut])
            drain(src)
            dropped_at = time.monotonic()
            server.drop(partial=pkts[cut][:57])
            server.send_events(pkts[cut:resume])  # nobody is connected: lost
            assert server.wait_for(lambda: src.link.connects == 2 and src.link.connected, 5)
            retry = [t for t in src.link.attempt_times if t > dropped_at]
            assert retry and retry[0] - dropped_at < 1.0, "first retry later than 1 s"
            server.send_events(pkts[resume:])
            drain(src)
        ami_only = attempts(db)
        # the queue_log tail of the same PBX runs as in the daemon
        tail = TailRunner("queue_log:pbx", qlog, queue_log_parser(s, make_normalizer(s)),
                          Ingestor(db, clock, detect_rules(s)))
        tail.poll()
        tail.close()
    merged = attempts(db)
    lost = {r["call_id"] for r in merged} - {r["call_id"] for r in ami_only}
    assert lost, "the outage lost no call: the test proves nothing"
    assert all(r["origin"] == "queue_log" for r in merged if r["call_id"] in lost)
    assert any(r["origin"] == "ami" for r in merged)
    # reference: the queue_log alone
    got = sorted((r["call_id"], r["outcome"], r["reason"], r["wait_seconds"]) for r in merged)
    got_callbacks = callbacks(db)
    wipe(db)
    import_queue_log(s, db, clock, qlog)
    assert got == sorted((r["call_id"], r["outcome"], r["reason"], r["wait_seconds"]) for r in attempts(db))
    assert got_callbacks == callbacks(db)  # nothing counted twice
    names = [e["event"] for e in logs]
    assert "ami.disconnected" in names and names.count("ami.connected") == 2
    gap = [e for e in logs if e["event"] == "ami.gap_backfilled_by_files"]
    assert gap and gap[0]["relies_on"] == ["queue_log:pbx"]


def test_dropped_mid_packet_leaves_a_dead_letter(db: Store) -> None:
    clock = FakeClock(AFTER_CAPTURE)
    with AmiTestServer() as server:
        s = ami_settings(server.port, extra=FAST)
        with running_source(s, db, clock) as src:
            server.wait_logged_in()
            server.drop(partial=b"Event: QueueCallerAbandon\r\nPrivilege: agent,all\r\nUniq")
            assert server.wait_for(lambda: src.link.connects == 2 and src.link.connected, 5)
            drain(src)
    dead = dead_letters(db)
    assert len(dead) == 1 and "mid-packet" in dead[0]["reason"]
    assert dead[0]["raw"].startswith(b"Event: QueueCallerAbandon")


def test_wrong_secret_is_one_clear_error_per_backoff_step() -> None:
    with AmiTestServer() as server, structlog.testing.capture_logs() as logs:
        s = ami_settings(server.port, secret="not-the-secret", extra=FAST).sources.ami[0]
        link = make_link(s)
        link.start()
        time.sleep(2.5)
        link.stop()
    refused = [e for e in logs if e["event"] == "ami.login_refused"]
    tries = [t for _, ok, t in server.logins]
    assert not any(ok for _, ok, _ in server.logins)
    # backoff 0.2 s doubling to a 0.8 s cap, jittered to [d/2, d]: 4 to 9 tries in 2.5 s, not a flood
    assert 3 <= len(tries) <= 9, len(tries)
    assert len(refused) == len(tries)  # one error per attempt, nothing else at error level
    assert [e for e in logs if e["log_level"] == "error"] == refused
    assert all(e["error"] == "Authentication failed" and e["username"] == "callbackd" and e["retry_in"] > 0
               for e in refused)
    gaps = [b - a for a, b in zip(tries, tries[1:])]
    assert all(g >= 0.09 for g in gaps) and gaps[-1] > gaps[0]
    assert "not-the-secret" not in repr(logs)


def test_refused_connection_is_retried_with_backoff(db: Store) -> None:
    clock = FakeClock(AFTER_CAPTURE)
    server = AmiTestServer().start()
    try:
        port = server.port
        server.refuse()
        s = ami_settings(port, extra=FAST)
        with structlog.testing.capture_logs() as logs:
            link = make_link(s.sources.ami[0])
            link.start()
            time.sleep(1.2)
            assert not link.connected
            server.listen()
            assert link.wait_connected(3)
            link.stop()
        t = link.attempt_times
        assert t[1] - t[0] < 1.0  # the first retry within a second
        assert len(t) <= 6
        warn = [e for e in logs if e["event"] == "ami.connect_failed"]
        assert 1 <= len(warn) <= 2  # the first failure and nothing more while the error stays the same
    finally:
        server.stop()
    assert clock is not None


def test_split_packets_and_garbage(db: Store) -> None:
    clock = FakeClock(AFTER_CAPTURE)
    pkts = event_packets(CAPTURES / "steps" / "02_inbound_abandon.ami.raw", timestamps=True)
    with AmiTestServer() as server:
        s = ami_settings(server.port, extra={"flush_interval": 0.05})
        with running_source(s, db, clock) as src:
            server.wait_logged_in()
            server.chunk = 7  # every packet arrives in 7-byte pieces
            server.send_raw(b"\x00\xffgarbage that is no packet\r\n\r\nnor is this\r\n\r\n")
            server.send_events(pkts[: len(pkts) // 2])
            server.chunk = None
            # a non-UTF-8 byte in a Uniqueid: the packet cannot be trusted -> dead letter
            server.send_event(packet(("Event", "QueueCallerJoin"), ("Privilege", "agent,all"),
                                     ("CallerIDNum", "5550999")).replace(b"5550999", b"5550999\r\nUniqueid: 17\xff.9"))
            # GBK bytes in a caller-ID *name* only: kept (the number is what matters)
            gbk = "张三".encode("gbk")
            server.send_event(b"Event: QueueCallerJoin\r\nPrivilege: agent,all\r\nCallerIDNum: 5550777\r\n"
                              b"CallerIDName: " + gbk + b"\r\nUniqueid: 1795772431.99\r\nQueue: hotline\r\n"
                              b"Timestamp: 1795772432.0\r\n\r\n")
            server.send_event(b"Event: HangupRequest\r\nPrivilege: call,all\r\nUniqueid: 1795772431.99\r\n"
                              b"Timestamp: 1795772433.0\r\n\r\n")
            server.send_event(b"Event: QueueCallerAbandon\r\nPrivilege: agent,all\r\nUniqueid: 1795772431.99\r\n"
                              b"Queue: hotline\r\nHoldTime: 1\r\nTimestamp: 1795772433.0\r\n\r\n")
            server.send_events(pkts[len(pkts) // 2:])
            drain(src)
            assert src.link.connects == 1 and server.connections == 1
    got = {(r["call_id"], r["number"], r["reason"]) for r in attempts(db)}
    assert got == {("1795772431.3", "+15550202", "abandon"), ("1795772431.99", "+15550777", "abandon")}
    reasons = sorted(d["reason"] for d in dead_letters(db))
    assert len(reasons) == 3
    assert sum("invalid UTF-8 in 'Uniqueid'" in r for r in reasons) == 1
    assert sum("not an AMI packet" in r for r in reasons) == 2


def test_a_failing_consumer_does_not_kill_the_reader(db: Store) -> None:
    clock = FakeClock(AFTER_CAPTURE)
    with AmiTestServer() as server:
        s = ami_settings(server.port)
        with running_source(s, db, clock) as src:
            def boom(name, keys, read_at):
                if name == "hanguprequest":
                    raise RuntimeError("consumer bug")

            src.link.subscribe(frozenset({"hanguprequest"}), boom)
            server.wait_logged_in()
            server.replay_file(CAPTURES / "steps" / "02_inbound_abandon.ami.raw", timestamps=True)
            server.replay_file(CAPTURES / "steps" / "03_inbound_abandon_ctx.ami.raw", timestamps=True)
            drain(src)
            assert src.link.connects == 1
    assert len(attempts(db)) == 2
    assert any("consumer bug" in d["reason"] for d in dead_letters(db))


def test_a_stalled_server_is_detected_and_left() -> None:
    with AmiTestServer() as server:
        s = ami_settings(server.port, extra=FAST).sources.ami[0]
        link = make_link(s)
        link.start()
        try:
            assert link.wait_connected(3)
            server.stalled = True
            assert server.wait_for(lambda: not link.connected, 3), "a silent server was not noticed"
            server.stalled = False
            assert link.wait_connected(3)
            assert link.connects == 2
        finally:
            link.stop()


@pytest.mark.parametrize("n", [2])
def test_several_pbx_at_once(db: Store, n: int) -> None:
    clock = FakeClock(AFTER_CAPTURE)
    with AmiTestServer() as a, AmiTestServer() as b:
        s = ami_settings(a.port, name="north", more_pbx=[{"name": "south", "port": b.port, "username": "callbackd",
                                                          "secret": "callbackd-secret", "flush_interval": 0.05}])
        with running_source(s, db, clock, 0) as north, running_source(s, db, clock, 1) as south:
            a.wait_logged_in()
            b.wait_logged_in()
            a.replay_file(CAPTURES / "steps" / "02_inbound_abandon.ami.raw", timestamps=True)
            b.replay_file(CAPTURES / "steps" / "02_inbound_abandon.ami.raw", timestamps=True)
            drain(north)
            drain(south)
    rows = attempts(db)
    assert sorted((r["system"], r["call_id"]) for r in rows) == [("north", "1795772431.3"), ("south", "1795772431.3")]
    assert len(s.sources.ami) == n
