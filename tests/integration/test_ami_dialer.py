"""The AMI dialer through the real Dispatcher and DialQueue, on SQLite and PostgreSQL.

The test server answers Originate as the capture dialplan did (CAPTURES steps 10-21): the
citizen's last digit decides (0-4 answers, 5 rings out, 7 rings and hangs up, 8 busy,
9 congestion); agent 2XX answers, 3XX never answers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from support.ami_env import ami_settings
from support.ami_server import AmiTestServer

from callback_queue.clock import FakeClock
from callback_queue.dialing import DialQueue
from callback_queue.errors import ConfigError
from callback_queue.queue import CallbackQueue
from callback_queue.store import Store
from daemon.ami.dialer import AmiDialer, build
from daemon.ami.settings import AmiDialerSettings, dialer_settings
from daemon.ami.source import make_link
from daemon.dispatch import Dispatcher

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
AGENT_FIRST = {"pbx": "pbx", "mode": "agent-first", "agent_channel": "Local/200@agents",
               "context": "callback_to_citizen", "caller_id": "Hotline <1000>", "ring_timeout_seconds": 15,
               "max_concurrent": 2, "settle_seconds": 0.3}
CITIZEN_FIRST = {"pbx": "pbx", "mode": "citizen-first", "citizen_channel": "Local/{number}@citizens",
                 "agent_exten": "200", "context": "callback_to_agent", "caller_id": "Hotline <1000>",
                 "max_concurrent": 2, "settle_seconds": 0.3}


@contextmanager
def dialing(store: Store, server: AmiTestServer, cfg: dict[str, Any]) -> Iterator[tuple[Dispatcher, CallbackQueue]]:
    clock = FakeClock(NOW)
    s = ami_settings(server.port, extra={"socket_timeout": 1.0})
    link = make_link(s.sources.ami[0])
    dialer = AmiDialer(link, AmiDialerSettings.model_validate(cfg), region="US")
    queue = CallbackQueue(store, clock)
    dispatcher = Dispatcher(DialQueue(queue), dialer, worker="test")
    dispatcher.start()
    try:
        assert link.wait_connected(5)
        yield dispatcher, queue
    finally:
        dispatcher.stop()


_seq = iter(range(10**6))


def open_callback(queue: CallbackQueue, number: str, minutes_ago: int = 10) -> Any:
    """Three failed calls from `number` (as a source would store them): detection opens a recall."""
    from callback_queue.attempts import Attempt, Origin, Outcome
    from callback_queue.ingest import Ingestor
    from daemon.app import detect_rules

    ts = int(NOW.timestamp()) - minutes_ago * 60
    calls = [Attempt("pbx", f"{ts + i * 60}.{next(_seq)}", number.lstrip("+"), number, ts + i * 60, ts + i * 60 + 30,
                     Outcome.FAILED, "abandon", 30, "hotline", Origin.AMI) for i in range(3)]
    opened = Ingestor(queue.store, queue.clock, detect_rules(ami_settings(5038))).ingest(calls).opened
    assert len(opened) == 1
    return queue.get(opened[0]).callback


def wait_closed(queue: CallbackQueue, cid: int, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        detail = queue.get(cid)
        if detail.callback.state.value != "dialing":
            return detail
        time.sleep(0.02)
    raise AssertionError(f"callback {cid} still dialing")


CASES = [
    # mode, number, agent channel, outcome, state, detail checks
    ("citizen-first", "+15550100", None, "reached", "reached", {"reason": 4}),
    ("citizen-first", "+15550105", None, "no-answer", "retry_wait", {"reason": 3}),
    ("citizen-first", "+15550108", None, "busy", "retry_wait", {"reason": 5}),
    ("citizen-first", "+15550109", None, "congestion", "retry_wait", {"reason": 8}),
    ("citizen-first", "+15550107", None, "no-answer", "retry_wait", {"reason": 0, "leg_status": "NOANSWER"}),
    ("citizen-first", "+15550111", None, "failed", "retry_wait", {"reason": 0}),  # server: invalid
    ("agent-first", "+15550120", "Local/200@agents", "reached", "reached", {"dial_status": "ANSWER"}),
    ("agent-first", "+15550128", "Local/200@agents", "busy", "retry_wait", {"dial_status": "BUSY", "reason": 4}),
    ("agent-first", "+15550125", "Local/200@agents", "no-answer", "retry_wait", {"dial_status": "NOANSWER"}),
    ("agent-first", "+15550130", "Local/300@agents", "failed", "retry_wait", {"leg": "agent", "reason": 3}),
]


@pytest.mark.parametrize(("mode", "number", "agent", "outcome", "state", "checks"), CASES,
                         ids=[f"{c[0]}-{c[1][-3:]}-{c[3]}" for c in CASES])
def test_originate_outcome_ends_in_callback_outcome_and_history(store: Store, mode: str, number: str,
                                                                agent: str | None, outcome: str, state: str,
                                                                checks: dict[str, Any]) -> None:
    cfg = dict(AGENT_FIRST if mode == "agent-first" else CITIZEN_FIRST)
    if agent:
        cfg["agent_channel"] = agent
    with AmiTestServer() as server, dialing(store, server, cfg) as (dispatcher, queue):
        server.behaviours["15550111"] = "invalid"
        cb = open_callback(queue, number)
        assert dispatcher.tick() == 1
        detail = wait_closed(queue, cb.id)
    orig = server.originates[0]
    assert orig["ActionID"].startswith(f"cbd-{cb.id}-") and orig["ChannelId"] == orig["ActionID"] + "-ch"
    assert orig["Async"] == "true" and orig["CallerID"] == "Hotline <1000>"
    variables = dict(v.split("=", 1) for v in orig["Variable"])
    assert variables["CALLBACK_ID"] == str(cb.id) and variables["CALLBACK_NUMBER"] == number.lstrip("+")
    if mode == "agent-first":
        assert (orig["Channel"], orig["Exten"], orig["Context"]) == (cfg["agent_channel"], number.lstrip("+"),
                                                                     "callback_to_citizen")
    else:
        assert (orig["Channel"], orig["Exten"]) == (f"Local/{number.lstrip('+')}@citizens", "200")
    c = detail.callback
    assert (c.outcome, c.state.value, c.dial_attempts) == (outcome, state, 1)
    closed = [e for e in detail.events if e.event == "closed"]
    assert len(closed) == 1
    ev = closed[0]
    assert ev.actor == "dialer:ami" and ev.to_state == state
    assert ev.detail["outcome"] == outcome and ev.detail["dial_ref"] == orig["ActionID"]
    for k, v in checks.items():
        assert ev.detail[k] == v, (k, ev.detail)
    assert [e.event for e in detail.events] == ["opened", "dialing", "closed"]


def test_no_free_agent_no_originate_then_the_next_due_is_dialed(store: Store) -> None:
    cfg = {**CITIZEN_FIRST, "queue": "hotline"}
    with AmiTestServer() as server:
        server.queues["hotline"] = {"LoggedIn": 2, "Available": 0, "Callers": 0}
        with dialing(store, server, cfg) as (dispatcher, queue):
            first = open_callback(queue, "+15550100", minutes_ago=30)
            second = open_callback(queue, "+15550101", minutes_ago=10)
            assert dispatcher.tick() == 0
            assert dispatcher.dialer.free_slots() == 0
            assert server.originates == []
            server.queues["hotline"] = {"LoggedIn": 2, "Available": 2, "Callers": 1}  # one caller waits: 1 free
            assert dispatcher.tick() == 1
            assert server.wait_for(lambda: len(server.originates) == 1)
            assert server.originates[0]["ActionID"].startswith(f"cbd-{first.id}-")
            wait_closed(queue, first.id)
            assert queue.get(second.id).callback.state.value == "pending"
            server.queues["hotline"] = {"LoggedIn": 2, "Available": 1, "Callers": 1}  # the caller takes it
            assert dispatcher.tick() == 0
            assert len(server.originates) == 1


def test_cap_on_concurrent_originates(store: Store) -> None:
    cfg = {**AGENT_FIRST, "max_concurrent": 1}
    with AmiTestServer() as server:
        server.outcome_delay = 0.3
        with dialing(store, server, cfg) as (dispatcher, queue):
            a = open_callback(queue, "+15550120", minutes_ago=30)
            open_callback(queue, "+15550121", minutes_ago=10)
            assert dispatcher.tick() == 1
            assert dispatcher.tick() == 0  # one under way, the cap is one
            wait_closed(queue, a.id)
            assert dispatcher.tick() == 1


def test_link_down_means_no_slots_and_status_raises(store: Store) -> None:
    with AmiTestServer() as server, dialing(store, server, AGENT_FIRST) as (dispatcher, queue):
        dialer = dispatcher.dialer
        assert dialer.free_slots() == 2
        assert dialer.status("cbd-9-unknown", NOW).value == "failed"  # the PBX has no such channel
        server.live_channels.add("cbd-8-abc-ch")
        assert dialer.status("cbd-8-abc", NOW) is None  # still up on the PBX
        server.refuse()
        server.drop()
        assert server.wait_for(lambda: not dialer.link.connected)
        assert dialer.free_slots() == 0
        from daemon.dispatch import DialError

        with pytest.raises(DialError):
            dialer.status("cbd-9-unknown", NOW)


def _settings_with(dialer: dict[str, Any]) -> Any:
    return ami_settings(5038, dialer=dialer)


def test_dialer_settings_fail_with_the_field_named() -> None:
    s = _settings_with({"kind": "ami", "ami": {"pbx": "pbx", "mode": "agent-first", "context": "cb"}})
    with pytest.raises(ConfigError, match=r"dialer\.ami: agent_channel is required"):
        dialer_settings(s)
    s = _settings_with({"kind": "ami", "ami": {**AGENT_FIRST, "ring_timeout_seconds": 1}})
    with pytest.raises(ConfigError, match=r"dialer\.ami\.ring_timeout_seconds"):
        dialer_settings(s)
    s = _settings_with({"kind": "ami", "ami": {**AGENT_FIRST, "pbx": "elsewhere"}})
    with pytest.raises(ConfigError, match=r"dialer\.ami\.pbx: no \[\[sources\.ami\]\] is named 'elsewhere'"):
        dialer_settings(s)
    s = _settings_with({"kind": "ami"})
    with pytest.raises(ConfigError, match=r"dialer\.ami"):
        dialer_settings(s)
    s = _settings_with({"kind": "ami", "ami": AGENT_FIRST})
    assert dialer_settings(s).mode == "agent-first"

    class FakeDaemon:
        settings = s

    d = build(FakeDaemon())  # type: ignore[arg-type]
    assert isinstance(d, AmiDialer) and d.link.name == "pbx"
