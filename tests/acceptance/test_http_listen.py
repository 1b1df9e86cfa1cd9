"""The HTTP server's socket, with the real CLI as a subprocess: a port someone else holds is one line on
stderr and exit 78 (EX_CONFIG: systemd does not restart-loop on it), and uvicorn's own log lines are the
daemon's JSON lines, not uvicorn's plain ones."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CALLBACKD = [sys.executable, "-m", "daemon"]
EX_CONFIG = 78


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "callbackd.toml"
    path.write_text(f"""
[daemon]
state_dir = "{tmp_path / 'state'}"
log_format = "json"

[store]
url = "sqlite:///{tmp_path / 'callbackd.db'}"

[http]
port = 0
""")
    r = subprocess.run([*CALLBACKD, "--config", str(path), "db", "upgrade"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return path


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port something else listens on (the daemon's own SO_REUSEADDR does not get past it)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_a_held_port_is_one_line_and_exit_78(cfg: Path, held_port: int) -> None:
    env = {**os.environ, "CALLBACKD_HTTP__PORT": str(held_port)}
    r = subprocess.run([*CALLBACKD, "--config", str(cfg), "run"], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == EX_CONFIG, r.stderr
    lines = r.stderr.splitlines()
    assert lines[-1] == (f"callbackd: cannot listen on 127.0.0.1:{held_port}: address already in use - "
                         "change [http] port (or stop what holds it)")
    assert "Traceback" not in r.stderr and "Errno" not in r.stderr and "RuntimeError" not in r.stderr
    _json_lines("\n".join(lines[:-1]))  # everything before it is the daemon's JSON log (start, stop)
    assert r.stdout == ""
    # and the unit does not restart what a restart cannot fix
    assert f"RestartPreventExitStatus={EX_CONFIG}" in (ROOT / "systemd" / "callbackd.service").read_text()


def test_uvicorn_logs_through_structlog(cfg: Path) -> None:
    p = subprocess.Popen([*CALLBACKD, "--config", str(cfg), "run"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        port, seen = None, []
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline and p.poll() is None:
            if select.select([p.stderr], [], [], 0.5)[0]:
                line = p.stderr.readline()  # type: ignore[union-attr]
                seen.append(line)
                if '"http.listening"' in line:
                    port = json.loads(line)["port"]
        assert port, "".join(seen)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:  # not HTTP: uvicorn warns
            c.sendall(b"\x00\x01 not http\r\n\r\n")
            assert c.recv(1000).startswith(b"HTTP/1.1 400")
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate(timeout=30)
    assert p.returncode == 0, err
    records = _json_lines("".join(seen) + err)  # every line is JSON: none of uvicorn's plain "WARNING:  ..."
    warned = [r for r in records if r.get("logger") == "uvicorn.error"]
    assert [r["event"] for r in warned] == ["Invalid HTTP request received."], records
    assert warned[0]["level"] == "warning" and "timestamp" in warned[0]
