"""Asterisk queue_log → attempts.

Every layout from 1.4 to 22 (see FORMATS.md a.1/a.2):
``<time>|<callid>|<queue>|<agent>|<EVENT>|<data1>|...``. A queue visit starts
with ENTERQUEUE (caller in data2) and ends with CONNECT (reached an agent) or
one of the failure verbs. Visits still in the queue are carried in `pending`,
which the caller saves with the file position so a restart loses none.

The attempt's identity is the caller channel's Uniqueid (the callid), so the
AMI source and the CDR of the same call land on the same row. A callid that
visits several queues is one call: connected if any visit connected.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from callback_queue.attempts import Attempt, DeadLetter, Origin, Outcome
from callback_queue.numbers import Normalizer

#: closing verbs of a visit that never reached an agent, and the reason stored
FAILURE_VERBS = {
    "ABANDON": "abandon",
    "EXITWITHTIMEOUT": "timeout",
    "EXITEMPTY": "exitempty",
    "EXITWITHKEY": "exitwithkey",
    "WITHDRAW": "withdraw",
    "SYSCOMPAT": "syscompat",
}
#: where the wait (hold) time sits, 0-based data index
_WAIT_INDEX = {"CONNECT": 0, "ABANDON": 2, "EXITEMPTY": 2, "EXITWITHTIMEOUT": 2, "EXITWITHKEY": 3,
               "WITHDRAW": 2}
#: verb -> (data field counts some Asterisk version writes, indexes that must be numbers), 1.4 -> 22
_SHAPES = {
    "CONNECT": ((2, 3), (0, 2)),            # holdtime|bridged-uniqueid[|ringtime] (1.4: two fields)
    "ABANDON": ((3,), (0, 1, 2)),           # position|origposition|waittime
    "EXITEMPTY": ((3,), (0, 1, 2)),
    "EXITWITHTIMEOUT": ((1, 3), (0, 1, 2)),  # 1.4 (and some 1.6-1.8 paths): position only
    "EXITWITHKEY": ((2, 4), (1, 2, 3)),     # key|position, 1.8+: key|position|origposition|waittime
    "WITHDRAW": ((3, 4), (0, 1, 2)),        # position|origposition|waittime[|info]
    "SYSCOMPAT": ((0, 1, 2, 3), ()),
}
_CONNECTED, _FAILED, _ORIGIN = Outcome.CONNECTED, Outcome.FAILED, Origin.QUEUE_LOG
_PSEUDO_CALLIDS = frozenset({"NONE", "MANAGER", "CLI", "REALTIME", "AUTO"})
_KNOWN_OTHER = frozenset({
    "COMPLETECALLER", "COMPLETEAGENT", "TRANSFER", "BLINDTRANSFER", "ATTENDEDTRANSFER",
    "RINGNOANSWER", "RINGCANCELED", "AGENTDUMP", "QUEUESTART", "CONFIGRELOAD", "ADDMEMBER",
    "REMOVEMEMBER", "PAUSE", "UNPAUSE", "PAUSEALL", "UNPAUSEALL", "PENALTY", "RINGINUSE",
    "AGENTLOGIN", "AGENTLOGOFF", "AGENTCALLBACKLOGIN", "AGENTCALLBACKLOGOFF", "OUTCALL", "DID",
    "QUEUESUMMARY", "INFO", "FULL", "CLOSED", "JOINEMPTY",
})
MAX_PENDING = 100_000
#: feed_rows' dispatch: verbs it handles inline (the rest go through `feed`)
_SKIP, _ENTER, _CONNECT, _FAIL = 0, 1, 2, 3
_FAST_VERBS = {**dict.fromkeys(_KNOWN_OTHER, _SKIP), "ENTERQUEUE": _ENTER, "CONNECT": _CONNECT,
               "ABANDON": _FAIL, "EXITWITHTIMEOUT": _FAIL}
_RANK = Origin.QUEUE_LOG.rank
#: what an attempt can hold: times up to 9999-12-31 (bigint anyway), waits in 32 bits, call ids of 128
MAX_TS = 253_402_300_799
MAX_WAIT = 2**31 - 1
MAX_CALLID = 128


class QueueLogParser:
    """Feeds queue_log lines, returns attempts as visits end.

    `feed` never raises on bad input: it returns a DeadLetter with the reason.
    """

    def __init__(
        self,
        *,
        source: str,
        system: str,
        normalizer: Normalizer,
        tz: ZoneInfo | None = None,
        pending: dict[str, Any] | None = None,
    ) -> None:
        self.source = source
        self.system = system
        self.normalizer = normalizer
        self.tz = tz
        #: callid -> [enter_ts, caller, queue]  (visits not yet ended)
        self.pending: dict[str, list[Any]] = dict(pending or {})
        self.unknown_verbs: dict[str, int] = {}

    def feed(self, line: bytes, position: str) -> Attempt | DeadLetter | None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            return self._feed_odd_bytes(line, position, exc.start)
        return self._feed_text(text, line, position)

    def feed_many(self, lines: list[bytes]) -> tuple[list[Attempt], list[tuple[int, DeadLetter]]]:
        """A batch of lines: (attempts, [(index in lines, dead letter)]); `feed_rows` as Attempts."""
        rows, dead = self.feed_rows(lines)
        return [_attempt(r) for r in rows], dead

    def feed_rows(self, lines: list[bytes] | bytes) -> tuple[list[tuple[Any, ...]], list[tuple[int, DeadLetter]]]:
        """`feed_many`, with the attempts as plain rows ready to store (`callback_queue.ingest.COLUMNS`
        order: str where Attempt has enums, and the origin's rank): the import's hot loop.

        An ASCII batch is decoded and split in one go; each line is split once and dispatched
        on its verb; the usual shapes of ENTERQUEUE, CONNECT, ABANDON and EXITWITHTIMEOUT
        build their row right here, verbs that never open or close a visit are skipped without
        building anything. Anything else goes through `feed`, which decides alone what is
        malformed (tests/unit/test_queue_log.py checks all three paths agree). The rows of one
        batch share one str object per queue name (marshal, the parse worker's hand-off, sends a
        repeated object once).

        `lines` may also be one block of bytes, the lines joined by "\n" (a file's chunk as
        read: an ASCII block is never split into a million bytes objects).
        """
        if isinstance(lines, list) and not lines:
            return [], []
        block = lines if isinstance(lines, bytes) else b"\n".join(lines)
        texts = block.decode("ascii").split("\n") if block.isascii() else []
        if isinstance(lines, bytes) and texts:
            lines = _Encoded(texts)  # type: ignore[assignment]
        elif len(texts) != len(lines):  # not ASCII, or a line holding "\n"
            if isinstance(lines, bytes):
                lines = lines.split(b"\n")
            # "" sends a line through `feed`; ASCII lines keep the fast path
            texts = [ln.decode("ascii") if ln.isascii() else "" for ln in lines]
        rows: list[tuple[Any, ...]] = []
        dead: list[tuple[int, DeadLetter]] = []
        add = rows.append
        pending = self.pending
        pseudo = _PSEUDO_CALLIDS
        normalize = self.normalizer.normalize
        system = self.system
        slow = self.feed
        verbs = _FAST_VERBS
        names: dict[str, str] = {}  # queue name -> its first str object in this batch
        same = names.setdefault
        for i, text in enumerate(texts):
            f = text.split("|")
            if len(f) >= 5:
                t = f[0]
                kind = verbs.get(f[4])
                if kind is not None and t.isdigit() and len(t) < 12:
                    if kind == _SKIP:
                        continue
                    callid = f[1]
                    if len(f) == 8 and callid and callid not in pseudo and len(callid) <= MAX_CALLID:
                        if kind == _ENTER:
                            d2 = f[7]
                            if (not d2 or d2.isdigit()) and len(pending) < MAX_PENDING:
                                q = f[2]
                                visit = [int(t), f[6], same(q, q)]
                                if pending.setdefault(callid, visit) is visit:
                                    continue
                        else:
                            d0, d2 = f[5], f[7]
                            if (d0.isdigit() and d2.isdigit() and len(d0) < 10 and len(d2) < 10
                                    and (kind == _CONNECT or f[6].isdigit())):
                                ts = int(t)
                                visit = pending.pop(callid, None)
                                if kind == _CONNECT:
                                    wait, outcome, reason = int(d0), "connected", "connect"
                                else:
                                    wait, outcome, reason = int(d2), "failed", FAILURE_VERBS[f[4]]
                                if visit is None:
                                    q = f[2]
                                    enter_ts, caller, queue = ts - wait, None, same(q, q)
                                else:
                                    enter_ts, caller, queue = visit
                                add((system, callid, caller or None, normalize(caller) if caller else None,
                                     enter_ts, ts, outcome, reason, wait, queue or None, "queue_log", _RANK))
                                continue
            r = slow(lines[i], "")
            if r is None:
                continue
            if type(r) is Attempt:
                add(_plain(r))
            else:
                dead.append((i, r))  # type: ignore[arg-type]
        return rows, dead

    def _feed_odd_bytes(self, line: bytes, position: str, bad_at: int) -> Attempt | DeadLetter | None:
        f = line.decode("utf-8", "surrogateescape").rstrip("\r\n").split("|")
        # only a caller-ID *name* (ENTERQUEUE data4, 20.14+/22.4+) may carry odd bytes
        if len(f) >= 9 and f[4] == "ENTERQUEUE" and not any(map(_has_surrogate, f[:8])):
            name = f[8].encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            return self._feed_text("|".join([*f[:8], name, *f[9:]]), line, position)
        return DeadLetter(self.source, position, line, f"invalid UTF-8 at byte {bad_at}")

    def _feed_text(self, text: str, line: bytes, position: str) -> Attempt | DeadLetter | None:
        if text.endswith("\r"):
            text = text.rstrip("\r")
        f = text.split("|")
        if len(f) < 5:
            if not text.strip():
                return DeadLetter(self.source, position, line, "empty line")
            return DeadLetter(self.source, position, line,
                              f"queue_log line has {len(f)} field{'' if len(f) == 1 else 's'}; at least 5 expected "
                              "(time|callid|queue|agent|event)")
        t = f[0]
        ts = int(t) if _num(t) and len(t) <= 12 else self._time(t)   # (int() refuses 4,300+ digits)
        if ts is None or not 0 <= ts <= MAX_TS:
            return DeadLetter(self.source, position, line, f"time field {t[:40]!r} is not an epoch "
                              "or a 'YYYY-MM-DD HH:MM:SS' time")
        verb = f[4]
        if verb == "ENTERQUEUE":
            return self._enter(f, ts, line, position)
        if verb == "CONNECT":
            return self._close(f, ts, line, position, "connect")
        reason = FAILURE_VERBS.get(verb)
        if reason is not None:
            return self._close(f, ts, line, position, reason)
        if verb in _KNOWN_OTHER:
            return None
        if not verb.isascii() or not verb.replace("_", "").isalnum() or not verb.isupper():
            return DeadLetter(self.source, position, line, f"event {verb[:40]!r} is not a queue_log verb")
        # a vendor verb (FORMATS.md a.2): tolerated, counted
        self.unknown_verbs[verb] = self.unknown_verbs.get(verb, 0) + 1
        if not f[1]:
            return DeadLetter(self.source, position, line, "empty callid")
        return None

    # -- verbs ---------------------------------------------------------------------
    def _enter(self, f: list[str], ts: int, line: bytes, position: str) -> DeadLetter | None:
        callid = f[1]
        if not callid or callid in _PSEUDO_CALLIDS:
            return DeadLetter(self.source, position, line, f"ENTERQUEUE with callid {callid!r}")
        if len(callid) > MAX_CALLID:
            return DeadLetter(self.source, position, line, f"callid of {len(callid)} characters (at most "
                                                           f"{MAX_CALLID})")
        n = len(f) - 5
        if n < 2 or n > 4 + (f[-1] == ""):
            return DeadLetter(self.source, position, line,
                              f"ENTERQUEUE has {n} data fields; 2 to 4 expected (url|callerid|position|name)")
        if n >= 3 and f[7] and not _num(f[7]):
            return DeadLetter(self.source, position, line, f"ENTERQUEUE position {f[7][:20]!r} is not a number")
        pending = self.pending
        prior = pending.get(callid)
        if prior is None:
            if len(pending) >= MAX_PENDING:
                # a visit whose end never came (a PBX crash): forget the oldest
                pending.pop(next(iter(pending)))
            pending[callid] = [ts, f[6], f[2]]
        else:
            # an overflow into another queue keeps the call's first entry time
            pending[callid] = [prior[0], f[6] or prior[1], f[2]]
        return None

    def _close(self, f: list[str], ts: int, line: bytes, position: str, reason: str) -> Attempt | DeadLetter:
        callid = f[1]
        verb = f[4]
        if not callid or callid in _PSEUDO_CALLIDS:
            return DeadLetter(self.source, position, line, f"{verb} with callid {callid!r}")
        if len(callid) > MAX_CALLID:
            return DeadLetter(self.source, position, line, f"callid of {len(callid)} characters (at most "
                                                           f"{MAX_CALLID})")
        data = f[5:]
        counts, numeric = _SHAPES[verb]
        n = len(data)
        if n and data[-1] == "" and n > max(counts):
            n -= 1  # a trailing "|"
        if n not in counts:
            want = " or ".join(map(str, counts))
            return DeadLetter(self.source, position, line, f"{verb} has {n} data fields; {want} expected")
        for i in numeric:
            if i < n and not _num(data[i]):
                return DeadLetter(self.source, position, line,
                                  f"{verb} field data{i + 1} {data[i][:20]!r} is not a number")
        idx = _WAIT_INDEX.get(verb)
        wait = int(data[idx]) if idx is not None and idx < n and len(data[idx]) <= 10 else None
        if idx is not None and idx < n and (wait is None or wait > MAX_WAIT):
            return DeadLetter(self.source, position, line, f"{verb} field data{idx + 1} {data[idx][:20]!r} is "
                                                           f"not a number of seconds (at most {MAX_WAIT})")
        visit = self.pending.pop(callid, None)
        if visit is None:
            # the visit began before this file (or before we started): caller unknown for now;
            # the CDR of the same call (same uniqueid) can supply it
            enter_ts, caller, queue = ts - (wait or 0), None, f[2]
        else:
            enter_ts, caller, queue = visit
            if wait is None:
                wait = ts - enter_ts if ts > enter_ts else 0
        return Attempt(
            self.system, callid, caller or None,
            self.normalizer.normalize(caller) if caller else None,
            enter_ts, ts,
            _CONNECTED if reason == "connect" else _FAILED,
            reason, wait, queue or None, _ORIGIN,
        )

    def _time(self, value: str) -> int | None:
        try:
            if "." in value and _num(value.replace(".", "", 1)):
                return int(float(value))
            dt = datetime.fromisoformat(value.strip())
        except (ValueError, OverflowError):   # float("1" * 400 + ".5") is inf
            return None
        if dt.tzinfo is None:
            if self.tz is None:
                return None
            dt = dt.replace(tzinfo=self.tz)
        return int(dt.timestamp())


class _Encoded:
    """The bytes of an ASCII block's lines, made only for the few that go through `feed`."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def __getitem__(self, i: int) -> bytes:
        return self.texts[i].encode("ascii")


def _plain(a: Attempt) -> tuple[Any, ...]:
    """An attempt as feed_rows gives it (callback_queue.ingest.plain_row, without importing the store)."""
    return (a.system, a.call_id, a.caller, a.number, a.started_ts, a.ended_ts, a.outcome.value, a.reason,
            a.wait_seconds, a.queue, a.origin.value, a.origin.rank)


def _attempt(row: tuple[Any, ...]) -> Attempt:
    return Attempt(*row[:6], Outcome(row[6]), *row[7:10], Origin(row[10]))


def _num(value: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts "²" and "①", which int() refuses."""
    return value.isascii() and value.isdigit()


def _has_surrogate(value: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in value)
