"""The demo: a small traffic player that writes a realistic hotline queue_log in real time.

`callbackd demo` writes a configuration into a folder, migrates its SQLite
database, starts this player appending calls to the folder's queue_log (as
Asterisk would: ENTERQUEUE when a citizen joins, CONNECT / ABANDON /
EXITWITHTIMEOUT when they leave) and runs the daemon tailing that file. A
scripted opening makes the first callback appear within about half a minute;
random traffic with repeat callers follows.
"""

from __future__ import annotations

import heapq
import itertools
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

DEMO_CONFIG = """\
# callbackd demo configuration (written by `callbackd demo`)
[daemon]
state_dir = "state"
timezone = "Asia/Shanghai"
log_format = "console"

[detect]
threshold = 3
lookback = "24h"
min_wait_seconds = 5
default_region = "CN"

[sources.queue_log]
path = "asterisk/queue_log"
system = "demo-pbx"
poll_interval = "0.5s"

[http]
port = 8080
public_url = "http://127.0.0.1:8080"   # rating links in the demo's SMS open on this machine

# The demo calls back around the clock so you can claim right away. A real hotline uses
# off-peak windows, e.g. workday = ["12:00-13:30", "18:30-20:30"] and quiet_hours = ["21:00-08:30"]
# (see config/callbackd.toml); `callbackd schedule preview` shows what they would do.
[schedule]
workday = ["00:00-24:00"]
restday = ["00:00-24:00"]
holiday = ["00:00-24:00"]
quiet_hours = []
capacity = { agents = 2, handle_time = "6m" }
sla = "24h"
replan_interval = "5s"
"""


class TrafficPlayer:
    """Appends queue_log lines for simulated calls, in real time.

    speed > 1 shortens the pauses between calls (not the waits written in the lines).
    """

    def __init__(self, path: Path, *, seed: int = 12345, calls_per_minute: float = 20.0,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> None:
        self.path = path
        self.rng = random.Random(seed)
        self.rate = calls_per_minute / 60.0
        self.clock = clock
        self.sleep = sleep
        self.stop_event = threading.Event()
        self._seq = itertools.count(1)
        self._events: list[tuple[float, int, str]] = []
        self.callers = [f"1{self.rng.choice('3456789')}{self.rng.randrange(10**9):09d}" for _ in range(400)]
        self.lines_written = 0

    # -- scheduling ---------------------------------------------------------------------
    def _at(self, when: float, line: str) -> None:
        heapq.heappush(self._events, (when, next(self._seq), line))

    def call(self, start: float, number: str, outcome: str, wait: int, position: int = 1) -> None:
        """Schedule one call: its ENTERQUEUE now-ish and its end `wait` seconds later."""
        uid = f"{int(start)}.{next(self._seq)}"
        self._at(start, f"{int(start)}|{uid}|hotline|NONE|ENTERQUEUE||{number}|{position}")
        end = start + wait
        if outcome == "answered":
            talk = self.rng.randint(30, 240)
            agent = f"PJSIP/80{self.rng.randint(10, 40)}"
            self._at(end, f"{int(end)}|{uid}|hotline|{agent}|CONNECT|{wait}|{int(end)}.{next(self._seq)}|"
                          f"{self.rng.randint(1, 6)}")
            self._at(end + talk, f"{int(end + talk)}|{uid}|hotline|{agent}|COMPLETECALLER|{wait}|{talk}|{position}")
        elif outcome == "abandon":
            self._at(end, f"{int(end)}|{uid}|hotline|NONE|ABANDON|{position}|{position}|{wait}")
        else:
            self._at(end, f"{int(end)}|{uid}|hotline|NONE|EXITWITHTIMEOUT|{position}|{position}|{wait}")

    def script_opening(self, t0: float) -> None:
        """Three short stories that show detection within about half a minute."""
        a, b, c = "13800138001", "13900139002", "01062345678"
        # A: three abandons in a row -> a callback
        self.call(t0 + 0.5, a, "abandon", 6)
        self.call(t0 + 8, a, "abandon", 7)
        self.call(t0 + 17, a, "timeout", 8)
        # B: two failures, then gets through -> no callback
        self.call(t0 + 1, b, "abandon", 9)
        self.call(t0 + 12, b, "answered", 5)
        # C (a Beijing landline): three timeouts -> a callback, then gets through -> cancelled as self-resolved
        self.call(t0 + 2, c, "timeout", 8)
        self.call(t0 + 11, c, "timeout", 8)
        self.call(t0 + 20, c, "timeout", 8)
        self.call(t0 + 45, c, "answered", 4)

    def _random_call(self, start: float) -> None:
        rng = self.rng
        number = rng.choice(self.callers)
        tries = 0
        t = start
        while True:
            r = rng.random()
            outcome = "answered" if r < 0.6 else ("abandon" if r < 0.85 else "timeout")
            wait = rng.randint(2, 25) if outcome != "timeout" else 20
            self.call(t, number, outcome, wait, position=rng.randint(1, 6))
            tries += 1
            if outcome == "answered" or tries >= 5 or rng.random() > 0.7:
                return
            t += wait + rng.uniform(3, 20)

    # -- running ------------------------------------------------------------------------
    def run(self, duration: float | None = None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        t0 = self.clock()
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{int(t0)}|NONE|NONE|NONE|QUEUESTART|\n")
            f.flush()
            self.script_opening(t0)
            next_random = t0 + 25
            while not self.stop_event.is_set():
                now = self.clock()
                if duration is not None and now - t0 >= duration:
                    break
                while next_random <= now:
                    self._random_call(next_random)
                    next_random += self.rng.expovariate(self.rate)
                while self._events and self._events[0][0] <= now:
                    _, _, line = heapq.heappop(self._events)
                    f.write(line + "\n")
                    self.lines_written += 1
                f.flush()
                wake = min(next_random, self._events[0][0] if self._events else next_random)
                self.stop_event.wait(max(0.05, min(1.0, wake - self.clock())))

    def stop(self) -> None:
        self.stop_event.set()
