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
#: where the wait time sits (0-based data index) in each failure verb, by field count
_WAIT_INDEX = {"ABANDON": 2, "EXITEMPTY": 2, "EXITWITHTIMEOUT": 2, "EXITWITHKEY": 3, "WITHDRAW": 2}
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
            text = line.decode("utf-8", "surrogateescape")
            bad_at = exc.start
        else:
            bad_at = -1
        text = text.rstrip("\r\n")
        f = text.split("|")
        if len(f) < 5:
            if not text.strip():
                return DeadLetter(self.source, position, line, "empty line")
            return DeadLetter(self.source, position, line,
                              f"queue_log line has {len(f)} fields; at least 5 expected "
                              "(time|callid|queue|agent|event)")
        ts = self._time(f[0])
        if ts is None:
            return DeadLetter(self.source, position, line, f"time field {f[0][:40]!r} is not an epoch "
                              "or a 'YYYY-MM-DD HH:MM:SS' time")
        verb = f[4]
        if not verb.isascii() or not verb.replace("_", "").isalnum() or not verb.isupper():
            return DeadLetter(self.source, position, line, f"event {verb[:40]!r} is not a queue_log verb")
        if bad_at >= 0 and (verb != "ENTERQUEUE" or any(map(_has_surrogate, f[:8]))):
            # only a caller-ID *name* (ENTERQUEUE data4, 20.14+/22.4+) may carry odd bytes
            return DeadLetter(self.source, position, line, f"invalid UTF-8 at byte {bad_at}")
        callid = f[1]
        if verb == "ENTERQUEUE":
            return self._enter(f, ts, line, position)
        if verb == "CONNECT":
            return self._close(f, ts, line, position, "connect")
        reason = FAILURE_VERBS.get(verb)
        if reason is not None:
            return self._close(f, ts, line, position, reason)
        if verb not in _KNOWN_OTHER:
            self.unknown_verbs[verb] = self.unknown_verbs.get(verb, 0) + 1
        if not callid:
            return DeadLetter(self.source, position, line, "empty callid")
        return None

    # -- verbs ---------------------------------------------------------------------
    def _enter(self, f: list[str], ts: int, line: bytes, position: str) -> DeadLetter | None:
        callid = f[1]
        if not callid or callid in _PSEUDO_CALLIDS:
            return DeadLetter(self.source, position, line, f"ENTERQUEUE with callid {callid!r}")
        if len(f) < 7:
            return DeadLetter(self.source, position, line,
                              "ENTERQUEUE without its callerid field (data2)")
        if len(self.pending) >= MAX_PENDING:
            # a visit whose end never came (a PBX crash): forget the oldest
            self.pending.pop(next(iter(self.pending)))
        prior = self.pending.get(callid)
        # an overflow into another queue keeps the call's first entry time
        self.pending[callid] = [ts if prior is None else prior[0], f[6] or (prior[1] if prior else ""), f[2]]
        return None

    def _close(self, f: list[str], ts: int, line: bytes, position: str, reason: str) -> Attempt | DeadLetter:
        callid = f[1]
        if not callid or callid in _PSEUDO_CALLIDS:
            return DeadLetter(self.source, position, line, f"{f[4]} with callid {callid!r}")
        data = f[5:]
        wait: int | None
        if reason == "connect":
            wait = _int(data[0]) if data else None
            if data and data[0] and wait is None:
                return DeadLetter(self.source, position, line, f"CONNECT holdtime {data[0][:20]!r} is not a number")
        else:
            for i, d in enumerate(data[:3]):
                if d and _int(d) is None and not (f[4] in ("EXITWITHKEY", "WITHDRAW") and i in (0, 3)):
                    return DeadLetter(self.source, position, line,
                                      f"{f[4]} field data{i + 1} {d[:20]!r} is not a number")
            idx = _WAIT_INDEX.get(f[4])
            wait = _int(data[idx]) if idx is not None and len(data) > idx else None
        visit = self.pending.pop(callid, None)
        if visit is None:
            # the visit began before this file (or before we started): caller unknown for now;
            # the CDR of the same call (same uniqueid) can supply it
            enter_ts, caller, queue = ts - (wait or 0), None, f[2]
        else:
            enter_ts, caller, queue = visit[0], visit[1] or None, visit[2]
        if wait is None and visit is not None:
            wait = max(0, ts - enter_ts)
        connected = reason == "connect"
        return Attempt(
            system=self.system,
            call_id=callid,
            caller=caller,
            number=self.normalizer.normalize(caller) if caller else None,
            started_ts=enter_ts,
            ended_ts=ts,
            outcome=Outcome.CONNECTED if connected else Outcome.FAILED,
            reason=reason,
            wait_seconds=wait,
            queue=queue or None,
            origin=Origin.QUEUE_LOG,
        )

    def _time(self, value: str) -> int | None:
        if value.isdigit():
            return int(value)
        try:
            if "." in value and value.replace(".", "", 1).isdigit():
                return int(float(value))
            dt = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
        if dt.tzinfo is None:
            if self.tz is None:
                return None
            dt = dt.replace(tzinfo=self.tz)
        return int(dt.timestamp())


def _int(value: str) -> int | None:
    value = value.strip()
    if value.isdigit():
        return int(value)
    if value.startswith("-") and value[1:].isdigit():
        return int(value)
    return None


def _has_surrogate(value: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in value)
