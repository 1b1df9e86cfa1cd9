"""`callbackd demo`: the newcomer's first run. It writes its config with the port asked for, its rating links
point at that port, it runs and stops on its own; a taken port is one line and exit 78, not a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

CALLBACKD = [str(Path(sys.executable).with_name("callbackd"))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLBACKD_")}
    return subprocess.run([*CALLBACKD, "demo", "--dir", str(folder), "--calls-per-minute", "120", *args],
                          capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)


def test_demo_on_the_port_asked_for_then_a_taken_port(tmp_path: Path) -> None:
    port = free_port()
    p = demo(tmp_path / "demo", "--port", str(port), "--duration", "3")
    assert p.returncode == 0, p.stderr[-3000:]
    cfg = tomllib.loads((tmp_path / "demo" / "callbackd.toml").read_text())
    assert cfg["http"]["port"] == port and cfg["http"]["public_url"] == f"http://127.0.0.1:{port}"
    assert f"web console: http://127.0.0.1:{port}/console/" in p.stderr
    assert "http.listening" in p.stderr and str(port) in p.stderr
    assert "sms.no_public_url" not in p.stderr     # the demo's links have a URL that works on this machine
    assert (tmp_path / "demo" / "asterisk" / "queue_log").stat().st_size > 0   # the player wrote calls

    with socket.socket() as held:
        held.bind(("127.0.0.1", port))
        held.listen()
        p = demo(tmp_path / "demo", "--duration", "3")
    assert p.returncode == 78, p.stderr[-3000:]
    assert p.stderr.rstrip().splitlines()[-1] == (
        f"callbackd: cannot listen on 127.0.0.1:{port}: address already in use - change [http] port "
        "(or stop what holds it)")
    assert "Traceback" not in p.stderr
