"""A reference model of detection, written apart from callback_queue/detection.py.

The rule, as DESIGN and the README state it: per caller, in event order
(started, call id), `threshold` counted failures in a row within the lookback,
since the caller's last connected call, open one callback; later counted
failures join it; a later connected call cancels it as self-resolved, and a new
streak may start after that. Abandons shorter than `min_wait_seconds` and
reasons not in `count_reasons` do not count (and do not break a streak).
Failures older than `now - lookback` open nothing.

The model is evaluated once over the whole stream: the daemon must reach the
same answer however the stream was cut into batches, restarts and crashes.

It also carries a small reader of the queue_log written by
shared/bench/gen_queue_log.py (ENTERQUEUE, CONNECT, ABANDON, EXITWITHTIMEOUT;
Chinese numbers), independent of daemon/sources/queue_log.py, so the crash
tests know what the daemon should have stored without asking the daemon's code.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from callback_queue.attempts import Attempt, Origin, Outcome
from callback_queue.detection import DetectRules


@dataclass(frozen=True, slots=True)
class Episode:
    """One callback the daemon must hold for a caller."""

    number: str
    episode_start_ts: int
    triggered_ts: int
    failures: int
    #: call id of the connected call that cancelled it (self-resolved); None: still owed a callback
    cancelled_by: str | None

    @property
    def key(self) -> tuple[str, int]:
        return (self.number, self.episode_start_ts)


@dataclass(frozen=True, slots=True)
class Expected:
    episodes: tuple[Episode, ...]
    threshold: int

    @property
    def owed(self) -> dict[str, Episode]:
        """Callers who must get exactly one callback (open, not self-resolved)."""
        return {e.number: e for e in self.episodes if e.cancelled_by is None}

    @property
    def cancelled(self) -> list[Episode]:
        """Episodes that must be cancelled as self-resolved."""
        return [e for e in self.episodes if e.cancelled_by is not None]

    def by_key(self) -> dict[tuple[str, int], Episode]:
        return {e.key: e for e in self.episodes}


@dataclass(slots=True)
class _Call:
    number: str | None
    started: int
    ended: int | None
    connected: bool
    reason: str
    wait: int | None
    rank: int


def merge_calls(attempts: Iterable[Attempt]) -> dict[tuple[str, str], _Call]:
    """One call per (system, call id): the best-ranked source wins; among equals, connected if any
    piece connected, started at the first piece, the last-ending failure's reason."""
    pieces: dict[tuple[str, str], list[Attempt]] = defaultdict(list)
    for a in attempts:
        pieces[(a.system, a.call_id)].append(a)
    calls: dict[tuple[str, str], _Call] = {}
    for key, ps in pieces.items():
        rank = max(_rank(p.origin) for p in ps)
        top = [p for p in ps if _rank(p.origin) == rank]
        number = next((p.number for p in top if p.number), None) or next((p.number for p in ps if p.number), None)
        connected = any(p.outcome is Outcome.CONNECTED for p in top)
        started = min(p.started_ts for p in top)
        ends = [p.ended_ts for p in top if p.ended_ts is not None]
        ended = max(ends) if ends else None
        if connected:
            reason, wait = "connect", next(p.wait_seconds for p in top if p.outcome is Outcome.CONNECTED)
        else:
            last = max(top, key=lambda p: p.ended_ts if p.ended_ts is not None else -1)
            reason, wait = last.reason, last.wait_seconds
            if len(top) > 1 and len(ends) == len(top):
                wait = max(ends) - started
        calls[key] = _Call(number, started, ended, connected, reason, wait, rank)
    return calls


def _rank(origin: Origin) -> int:
    return 1 if origin is Origin.CDR else 2


def expected(attempts: Iterable[Attempt], rules: DetectRules, now_ts: int) -> Expected:
    """The callbacks the daemon must hold after seeing `attempts`, evaluated at `now_ts`."""
    per_number: dict[str, list[tuple[int, str, _Call]]] = defaultdict(list)
    for (_system, call_id), c in merge_calls(attempts).items():
        if c.number:
            per_number[c.number].append((c.started, call_id, c))
    oldest = now_ts - rules.lookback_seconds
    out: list[Episode] = []
    for number, calls in per_number.items():
        calls.sort(key=lambda x: (x[0], x[1]))
        streak: list[int] = []          # start times of the counted failures in a row
        owed: dict[str, int] | None = None  # the episode being built: start, triggered, failures
        for started, call_id, c in calls:
            if c.connected:
                if owed is not None:
                    out.append(Episode(number, owed["start"], owed["triggered"], owed["failures"], call_id))
                    owed = None
                streak = []
                continue
            if c.reason not in rules.count_reasons:
                continue
            if c.reason == "abandon" and c.wait is not None and c.wait < rules.min_wait_seconds:
                continue
            if owed is not None:
                owed["failures"] += 1
                continue
            if started < oldest:
                continue
            streak.append(started)
            if len(streak) == rules.threshold:
                owed = {"start": streak[0], "triggered": started, "failures": len(streak)}
                streak = []
        if owed is not None:
            out.append(Episode(number, owed["start"], owed["triggered"], owed["failures"], None))
    out.sort(key=lambda e: e.key)
    return Expected(tuple(out), rules.threshold)


# -- the generator's queue_log, read independently -------------------------------------------------
_FAIL = {"ABANDON": "abandon", "EXITWITHTIMEOUT": "timeout"}


def e164_cn(raw: str) -> str:
    """The generator's numbers: 11-digit mobiles 1xxxxxxxxxx and landlines 0xx..., in China."""
    digits = raw.strip()
    assert digits.isdigit(), raw
    if digits.startswith("0"):
        return "+86" + digits[1:]
    return "+86" + digits


def read_gen_queue_log(lines: Iterable[str], system: str) -> list[Attempt]:
    """Attempts in a queue_log from gen_queue_log.py (or written by the tests in its format).

    Only complete calls (ENTERQUEUE and its closing line) are returned; a call whose
    closing line has not been written yet is not an attempt yet.
    """
    entered: dict[str, tuple[int, str, str]] = {}
    out: list[Attempt] = []
    for line in lines:
        line = line.rstrip("\n")
        if not line:
            continue
        f = line.split("|")
        ts, callid, queue, verb = int(f[0]), f[1], f[2], f[4]
        if verb == "ENTERQUEUE":
            entered[callid] = (ts, f[6], queue)
        elif verb == "CONNECT" or verb in _FAIL:
            enter_ts, caller, q = entered.pop(callid)
            if verb == "CONNECT":
                out.append(Attempt(system, callid, caller, e164_cn(caller), enter_ts, ts, Outcome.CONNECTED,
                                   "connect", int(f[5]), q, Origin.QUEUE_LOG))
            else:
                out.append(Attempt(system, callid, caller, e164_cn(caller), enter_ts, ts, Outcome.FAILED,
                                   _FAIL[verb], int(f[7]), q, Origin.QUEUE_LOG))
    return out
