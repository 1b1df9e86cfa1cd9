"""Helpers for the crash tests: seeds and iteration counts, the daemon as a subprocess, SIGKILL.

CALLBACKD_CRASH_ITERATIONS sets how many SIGKILLs each crash test deals (default 4: the CI run;
the full run uses 50 or more); CALLBACKD_CRASH_SEED fixes the seed (default 20261127; "random" draws one, printed
so a failure can be replayed).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CALLBACKD = [sys.executable, "-m", "daemon"]
ROOT = Path(__file__).resolve().parents[2]


def iterations(default: int = 4) -> int:
    return int(os.environ.get("CALLBACKD_CRASH_ITERATIONS", default))


def seeded(test_name: str) -> tuple[random.Random, int, int]:
    """The test's random generator, its seed and the iteration count (both printed)."""
    # CI uses a fixed seed so a run is repeatable; CALLBACKD_CRASH_SEED=random (the full run) draws one.
    # Seed 125121623 found the retraction-boundary bug; test_crash_tail.py replays it on every run.
    raw = os.environ.get("CALLBACKD_CRASH_SEED") or "20261127"
    seed = random.SystemRandom().randrange(2**31) if raw == "random" else int(raw)
    n = iterations()
    print(f"\n{test_name}: seed={seed} iterations={n} "
          f"(replay: CALLBACKD_CRASH_SEED={seed} CALLBACKD_CRASH_ITERATIONS={n})", flush=True)
    return random.Random(seed), seed, n


def write_config(tmp: Path, store_url: str, extra: str = "") -> Path:
    cfg = tmp / "callbackd.toml"
    cfg.write_text(f"""
[daemon]
state_dir = "{tmp / 'state'}"
timezone = "Asia/Shanghai"
log_format = "json"
sweep_interval = "1s"

[store]
url = "{store_url}"

[detect]
threshold = 3
lookback = "3650d"
min_wait_seconds = 5

[http]
port = 0
""" + extra)
    return cfg


def cli(cfg: Path, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CALLBACKD, "--config", str(cfg), *args], capture_output=True, text=True,
                          check=check, timeout=timeout, cwd=ROOT)


class Proc:
    """A callbackd subprocess with its output in files (never a pipe that could fill up)."""

    def __init__(self, cfg: Path, *args: str, tag: str) -> None:
        self.out = cfg.parent / f"{tag}.out"
        self.err = cfg.parent / f"{tag}.err"
        with open(self.out, "ab") as o, open(self.err, "ab") as e:
            self.p = subprocess.Popen([*CALLBACKD, "--config", str(cfg), *args], stdout=o, stderr=e, cwd=ROOT)

    def kill_after(self, seconds: float) -> int | None:
        """SIGKILL after `seconds` unless it exits first; returns its exit code if it did."""
        try:
            return self.p.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int | None:
        """SIGKILL; returns the exit code if it had already exited on its own."""
        rc = self.p.poll()
        if rc is None:
            self.p.send_signal(signal.SIGKILL)
            self.p.wait(timeout=30)
        return rc

    def stop(self, timeout: float = 60) -> int:
        self.p.send_signal(signal.SIGTERM)
        return self.p.wait(timeout=timeout)

    def wait_started(self, timeout: float = 60) -> bool:
        """Until the daemon logs daemon.started (its signal handlers are in place by then)."""
        return bool(wait_for(lambda: "daemon.started" in self.stderr() or self.p.poll() is not None, timeout)
                    and self.p.poll() is None)

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")


def wait_for(pred: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return pred()
