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
_FAST_CLOSE = frozenset({"CONNECT", "ABANDON", "EXITWITHTIMEOUT"})
_PSEUDO_CALLIDS = frozenset({"NONE", "MANAGER", "CLI", "REALTIME", "AUTO"})
_KNOWN_OTHER = frozenset({
    "COMPLETECALLER", "COMPLETEAGENT", "TRANSFER", "BLINDTRANSFER", "ATTENDEDTRANSFER",
    "RINGNOANSWER", "RINGCANCELED", "AGENTDUMP", "QUEUESTART", "CONFIGRELOAD", "ADDMEMBER",
    "REMOVEMEMBER", "PAUSE", "UNPAUSE", "PAUSEALL", "UNPAUSEALL", "PENALTY", "RINGINUSE",
    "AGENTLOGIN", "AGENTLOGOFF", "AGENTCALLBACKLOGIN", "AGENTCALLBACKLOGOFF", "OUTCALL", "DID",
    "QUEUESUMMARY", "INFO", "FULL", "CLOSED", "JOINEMPTY",
})
MAX_PENDING = 100_000


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
        """A batch of lines: (attempts, [(index in lines, dead letter)]).

        The usual shapes of ENTERQUEUE, CONNECT, ABANDON and EXITWITHTIMEOUT are
        handled inline (this loop is most of an import's time); anything else
        goes through `feed`, which decides alone what is malformed. Both give
        the same results (tests/unit/test_queue_log.py checks that).
        """
        attempts: list[Attempt] = []
        dead: list[tuple[int, DeadLetter]] = []
        pending = self.pending
        pseudo = _PSEUDO_CALLIDS
        normalize = self.normalizer.normalize
        system = self.system
        slow = self.feed
        known = _KNOWN_OTHER
        make = tuple.__new__
        for i, line in enumerate(lines):
            try:
                f = line.decode("utf-8").split("|")
            except UnicodeDecodeError:
                f = ()  # type: ignore[assignment]
            if len(f) >= 5 and f[0].isdigit() and line.isascii():
                verb = f[4]
                if verb in known:
                    continue
                callid = f[1]
                if len(f) != 8 or not callid or callid in pseudo:
                    pass
                elif verb == "ENTERQUEUE":
                    if (not f[7] or f[7].isdigit()) and callid not in pending and len(pending) < MAX_PENDING:
                        pending[callid] = [int(f[0]), f[6], f[2]]
                        continue
                elif verb in _FAST_CLOSE:
                    d0, d1, d2 = f[5], f[6], f[7]
                    if d0.isdigit() and d2.isdigit() and (verb == "CONNECT" or d1.isdigit()):
                        ts = int(f[0])
                        visit = pending.pop(callid, None)
                        connected = verb == "CONNECT"
                        wait = int(d0) if connected else int(d2)
                        if visit is None:
                            enter_ts, caller, queue = ts - wait, None, f[2]
                        else:
                            enter_ts, caller, queue = visit
                        # tuple.__new__: a NamedTuple's own __new__ costs more than the parse
                        attempts.append(make(Attempt, (
                            system, callid, caller or None, normalize(caller) if caller else None,
                            enter_ts, ts, _CONNECTED if connected else _FAILED,
                            "connect" if connected else FAILURE_VERBS[verb], wait, queue or None, _ORIGIN,
                        )))
                        continue
            r = slow(line, "")
            if r is None:
                continue
            if type(r) is Attempt:
                attempts.append(r)
            else:
                dead.append((i, r))  # type: ignore[arg-type]
        return attempts, dead

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
                              f"queue_log line has {len(f)} fields; at least 5 expected "
                              "(time|callid|queue|agent|event)")
        t = f[0]
        ts = int(t) if _num(t) else self._time(t)
        if ts is None:
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
        wait = int(data[idx]) if idx is not None and idx < n else None
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
        except ValueError:
            return None
        if dt.tzinfo is None:
            if self.tz is None:
                return None
            dt = dt.replace(tzinfo=self.tz)
        return int(dt.timestamp())


def _num(value: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts "²" and "①", which int() refuses."""
    return value.isascii() and value.isdigit()


def _has_surrogate(value: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in value)
