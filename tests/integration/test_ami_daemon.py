"""The AMI source and dialer inside the real Daemon (FEATURE_MODULES, components, APScheduler jobs)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from support.ami_env import CAPTURES, ami_settings, attempts
from support.ami_server import AmiTestServer

from callback_queue.clock import FakeClock
from callback_queue.errors import ConfigError
from callback_queue.queue import CallbackQueue
from callback_queue.store import Store
from daemon.app import Daemon
from daemon.settings import Settings, load_settings

AFTER_CAPTURE = datetime(2026, 11, 27, 9, 44, tzinfo=UTC)
DIALER = {"kind": "ami", "ami": {"pbx": "pbx", "mode": "agent-first", "agent_channel": "Local/200@agents",
                                 "context": "callback_to_citizen", "caller_id": "Hotline <1000>"}}


@pytest.fixture
def db(tmp_path: Path) -> Store:
    s = Store(f"sqlite:///{tmp_path / 'daemon.db'}")
    s.upgrade()
    yield s
    s.dispose()


def test_daemon_turns_live_events_into_a_callback_and_places_it(db: Store, tmp_path: Path) -> None:
    clock = FakeClock(AFTER_CAPTURE)
    with AmiTestServer() as server:
        s = ami_settings(server.port, dialer=DIALER)
        s = s.model_copy(update={"daemon": s.daemon.model_copy(update={"state_dir": tmp_path})})
        daemon = Daemon(s, store=db, clock=clock)
        t = threading.Thread(target=daemon.run, daemon=True)
        t.start()
        try:
            assert server.wait_logged_in(1, 10)
            assert server.wait_for(lambda: any(a.get("Action") == "Filter" for a in server.actions))
            server.replay_file(CAPTURES / "steps" / "22_mixed_story.ami.raw", timestamps=True)
            queue = CallbackQueue(db, clock)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                done = [c for c in queue.list() if c.state.value == "reached"]
                if done and len(attempts(db)) == 9:
                    break
                time.sleep(0.1)
            else:
                raise AssertionError(f"no callback reached: {queue.list()}")
        finally:
            daemon.stop()
            t.join(15)
        assert not t.is_alive()
    assert server.connections == 1  # the source and the dialer share one link
    assert [c.number for c in done] == ["+15550101"]
    orig = server.originates[0]
    assert orig["Exten"] == "15550101" and orig["Channel"] == "Local/200@agents"
    rows = attempts(db)
    assert len(rows) == 9 and {r["origin"] for r in rows} == {"ami"}
    assert {"scheduling", "ami"} <= {c.name for c in daemon.components}


def test_config_file_with_pbx_and_secret_file_is_redacted(tmp_path: Path) -> None:
    secret = tmp_path / "ami.secret"
    secret.write_text("s3cr3t-from-file\n")
    cfg = tmp_path / "callbackd.toml"
    cfg.write_text(f"""
[[sources.ami]]
name = "north"
host = "10.0.0.5"
username = "callbackd"
secret_file = "{secret}"

[[sources.ami]]
name = "south"
username = "callbackd"
secret = "inline-secret"

[dialer]
kind = "ami"
[dialer.ami]
pbx = "north"
mode = "citizen-first"
agent_exten = "200"
context = "callback_to_agent"
""")
    s = load_settings(cfg, env={})
    assert [x.name for x in s.sources.ami] == ["north", "south"]
    assert s.sources.ami[0].secret.get_secret_value() == "s3cr3t-from-file"
    dumped = repr(s.redacted())
    assert "s3cr3t-from-file" not in dumped and "inline-secret" not in dumped


def test_a_pbx_without_secret_fails_at_load(tmp_path: Path) -> None:
    cfg = tmp_path / "callbackd.toml"
    cfg.write_text('[[sources.ami]]\nname = "north"\nusername = "callbackd"\n')
    with pytest.raises(ConfigError, match=r"sources\.ami\.0.*secret or secret_file is required"):
        load_settings(cfg, env={})
    assert isinstance(Settings(), Settings)
