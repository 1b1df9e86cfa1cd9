"""The daemon under a notify socket the test owns, as systemd would run it (Type=notify, WatchdogSec)."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from test_daemon import CALLBACKD, cli, write_config


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self.cursor = 0

    def drain(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def wait_for(self, key: str, value: str | None = None, timeout: float = 20) -> dict[str, str]:
        """The next message (after the last one matched) that carries key=value."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for i in range(self.cursor, len(self.messages)):
                m = self.messages[i][1]
                if key in m and (value is None or m[key] == value):
                    self.cursor = i + 1
                    return m
            self.drain(0.2)
        raise AssertionError(f"no {key}={value} within {timeout} s; got {[m for _, m in self.messages][:8]}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path):
    # AF_UNIX paths are short: keep the socket out of pytest's long tmp path
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="cbd"))
    s = NotifySocket(d / "notify")
    yield s
    s.close()


def start(cfg: Path, notify: NotifySocket, watchdog_usec: int = 2_000_000) -> subprocess.Popen[str]:
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(watchdog_usec)}
    return subprocess.Popen([*CALLBACKD, "--config", str(cfg), "run"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_ready_status_watchdog_reload_stop(tmp_path: Path, notify: NotifySocket):
    cfg = write_config(tmp_path, f"sqlite:///{tmp_path / 'cb.db'}")
    cli(cfg, "db", "upgrade")
    p = start(cfg, notify)
    try:
        ready = notify.wait_for("READY", "1")
        assert "watching queue_log:pbx1" in ready["STATUS"]
        assert ready["MAINPID"] == str(p.pid)
        t0 = time.monotonic()
        notify.drain(4.5)
        pings = [t for t, m in notify.messages if m.get("WATCHDOG") == "1" and t >= t0]
        assert len(pings) >= 3, f"{len(pings)} watchdog pings in 4.5 s with WatchdogSec=2"
        p.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING", "1")
        notify.wait_for("READY", "1")
        assert p.poll() is None
        p.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING", "1")
        p.communicate(timeout=30)
        assert p.returncode == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()


def test_a_wedged_daemon_stops_pinging_the_watchdog(tmp_path: Path, notify: NotifySocket):
    db = tmp_path / "cb.db"
    cfg = write_config(tmp_path, f"sqlite:///{db}")
    cli(cfg, "db", "upgrade")
    p = start(cfg, notify)
    try:
        notify.wait_for("READY", "1")
        notify.wait_for("WATCHDOG", "1")
        # wedge it: another process holds the database's write lock; every job waits on it
        lock = sqlite3.connect(db, isolation_level=None, timeout=0)
        lock.execute("BEGIN EXCLUSIVE")
        notify.drain(3)            # the beat goes stale after one watchdog interval (2 s)
        t0 = time.monotonic()
        notify.drain(6)
        late = [t for t, m in notify.messages if m.get("WATCHDOG") == "1" and t > t0]
        assert late == [], f"{len(late)} watchdog pings while wedged (systemd would never notice)"
        assert any(m.get("STATUS", "").startswith("unhealthy") for t, m in notify.messages if t > t0 - 3)
        lock.execute("ROLLBACK")
        lock.close()
        notify.wait_for("WATCHDOG", "1", timeout=15)   # and it recovers by itself
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=60)
