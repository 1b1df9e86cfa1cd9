"""Seeded synthetic hotline traffic, dense in repeat callers, as queue_log lines.

Lines are in the layout of shared/bench/gen_queue_log.py (so tests/support/model.py
reads both) and in timestamp order, as Asterisk appends them. A small pool of
numbers makes streaks, self-resolutions and second episodes common; some
abandons are shorter than a typical min_wait (misdials).
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path


def queue_log_lines(seed: int, calls: int, *, start_ts: int, numbers: int = 40,
                    span_seconds: int = 6 * 3600) -> list[str]:
    rng = random.Random(seed)
    pool = ["13" + str(rng.randrange(10**9)).zfill(9) for _ in range(numbers - numbers // 5)]
    pool += ["010" + str(rng.randrange(2 * 10**7, 9 * 10**7)) for _ in range(numbers // 5)]
    out: list[tuple[int, int, str]] = []
    seq = 0
    for i in range(calls):
        t = start_ts + rng.randrange(span_seconds)
        caller = rng.choice(pool)
        callid = f"{t}.{i}"
        seq += 1
        out.append((t, seq, f"{t}|{callid}|hotline|NONE|ENTERQUEUE||{caller}|1"))
        u = rng.random()
        if u < 0.35:
            hold = 1 + rng.randrange(120)
            seq += 1
            out.append((t + hold, seq, f"{t + hold}|{callid}|hotline|PJSIP/8001|CONNECT|{hold}|{t + hold}.{i}x|3"))
            seq += 1
            out.append((t + hold + 60, seq, f"{t + hold + 60}|{callid}|hotline|PJSIP/8001|COMPLETECALLER|{hold}|60|1"))
        elif u < 0.85:
            wait = rng.choice([1, 2, 3, 4]) if rng.random() < 0.15 else 5 + rng.randrange(200)
            seq += 1
            out.append((t + wait, seq, f"{t + wait}|{callid}|hotline|NONE|ABANDON|1|1|{wait}"))
        else:
            wait = 300 + rng.randrange(5)
            seq += 1
            out.append((t + wait, seq, f"{t + wait}|{callid}|hotline|NONE|EXITWITHTIMEOUT|1|1|{wait}"))
    out.sort()
    return [line for _, _, line in out]


class Writer(threading.Thread):
    """Appends the traffic in random pieces (cut anywhere, even mid-line) over about `seconds`."""

    def __init__(self, path: Path, lines: list[str], rng: random.Random, seconds: float,
                 rotate_gate: threading.Event | None = None) -> None:
        super().__init__(daemon=True)
        self.path, self.rng = path, rng
        # the rotation waits for this: a daemon that never saw the first file has no cursor to follow
        # it by, and reads only the new file on its first start (older files are `callbackd import`'s)
        self.rotate_gate = rotate_gate
        self.data = ("\n".join(lines) + "\n").encode()
        self.rotate_at = self.data.index(b"\n", len(self.data) // 2) + 1  # rotate on a line boundary
        self.pieces = max(1, len(self.data) // 1500)
        self.pause = seconds / self.pieces
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            pos, rotated = 0, False
            while pos < len(self.data):
                end = min(len(self.data), pos + self.rng.randrange(1, 3000))
                if not rotated and end > self.rotate_at:
                    end = self.rotate_at
                with open(self.path, "ab") as f:
                    f.write(self.data[pos:end])
                pos = end
                if pos == self.rotate_at and not rotated:
                    if self.rotate_gate is not None and not self.rotate_gate.wait(timeout=600):
                        raise TimeoutError("the rotation gate was never opened")
                    self.path.rename(self.path.with_name(self.path.name + ".1"))
                    rotated = True
                time.sleep(self.rng.uniform(0, 2 * self.pause))
        except BaseException as exc:  # reported by the test
            self.error = exc
