"""A daemon started with nothing to watch says so (a warning with what to set), once; one with a source does not."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CALLBACKD = [str(Path(sys.executable).with_name("callbackd"))]


def run_briefly(tmp_path: Path, extra: str) -> list[dict]:
    cfg = tmp_path / "callbackd.toml"
    cfg.write_text(f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n[store]\nurl = "sqlite:///{tmp_path}/db"\n'
                   f'[http]\nenabled = false\n{extra}', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLBACKD_")}
    subprocess.run([*CALLBACKD, "--config", str(cfg), "db", "upgrade"], check=True, capture_output=True, env=env)
    log = tmp_path / "daemon.log"
    with open(log, "wb") as err:
        p = subprocess.Popen([*CALLBACKD, "--config", str(cfg), "run"], stdout=subprocess.DEVNULL, stderr=err,
                             env=env, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while b"daemon.started" not in log.read_bytes():
            assert p.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0, log.read_text()
    finally:
        if p.poll() is None:
            p.kill()
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def test_nothing_to_watch_is_said(tmp_path: Path) -> None:
    events = run_briefly(tmp_path, "")
    warned = [e for e in events if e["event"] == "daemon.no_sources"]
    assert len(warned) == 1 and "[sources.queue_log] path" in warned[0]["hint"]


def test_a_daemon_with_a_source_does_not_warn(tmp_path: Path) -> None:
    events = run_briefly(tmp_path, f'[sources.queue_log]\npath = "{tmp_path / "queue_log"}"\n')
    assert "daemon.started" in [e["event"] for e in events]
    assert "daemon.no_sources" not in [e["event"] for e in events]
