"""Asterisk CDR (cdr_csv / cdr_custom / DB-export CSV) → attempts.

One physical line in, one of three answers out (`CdrParser.feed` never raises):

* an `Attempt` for the caller leg of an inbound hotline call: ``dcontext`` is one of
  `CdrOptions.inbound_contexts` or ``dst`` is one of `CdrOptions.hotline_numbers`;
* ``None`` for anything else: agent legs (``dcontext`` ``agents``), outbound callback legs,
  header rows, blank lines;
* a `DeadLetter` with a human reason for input that cannot be a CDR record.

Layouts (FORMATS.md c.1), chosen per line by column count and shape:

* cdr_csv order ``accountcode, src, dst, dcontext, clid, channel, dstchannel, lastapp, lastdata,
  start, answer, end, duration, billsec, disposition, amaflags`` (16) + ``uniqueid`` (17)
  + ``userfield`` (18) + ``peeraccount, linkedid, sequence`` (21); 19 = 16 + the three
  newcdrcolumns, 20 = 17 + them. The real ``cdr-custom/Master.csv`` of the captures uses this
  order too, with 21 columns ending ``…, uniqueid, userfield, linkedid, sequence, ""``; the
  tail after userfield is never read, so both 21-column variants parse alike.
* stock cdr_custom order ``clid, src, dst, dcontext, channel, dstchannel, lastapp, lastdata,
  start, answer, end, duration, billsec, disposition, amaflags, accountcode, uniqueid,
  userfield, sequence`` (19; 20/21 with linkedid / peeraccount before sequence).
* a header row (first field ``accountcode``, ``clid`` or ``calldate``) fixes the mapping by
  column name for every later line, whatever `CdrOptions.layout` says; ``calldate`` = start.

With ``layout="auto"`` a 19–21 column line is cdr_csv when field 4 looks like a clid
(``"name" <number>``), cdr_custom when field 0 does, else by which order puts a
disposition and a start date where they belong.
Lines are decoded as UTF-8, falling back to latin-1 (caller-ID names carry odd bytes). The
literal ``NULL`` means empty, and an empty time field means "unset". A quoted field spanning two
physical lines arrives as two broken lines and gives two dead letters.

Outcome (CAPTURES.md "CDR dispositions mislead for queue calls"; ANSWERED often only means the
dialplan answered the caller before ``Queue()``):

* CONNECTED / ``connect`` only when disposition is ANSWERED **and** ``dstchannel`` is set
  **and** ``billsec`` > 0, i.e. the caller leg was bridged to an agent leg;
* otherwise FAILED, reason by disposition: NO ANSWER → ``no-answer``, BUSY → ``busy``,
  CONGESTION → ``congestion``, FAILED and UNKNOWN → ``failed``, CANCEL → ``abandon``, and
  ANSWERED without an agent (no ``dstchannel`` or ``billsec`` 0, e.g. ``lastapp`` Queue or
  the Hangup after a queue timeout) → ``abandon``: the caller never reached a person. A CDR
  cannot tell a queue timeout from a hang-up; queue_log/AMI (higher rank) can;
* except ``refused``: a never-answered record whose last app was ``Queue(<name>)``, with no
  ``dstchannel`` and a duration of 0 — the queue turned the caller away at the door, which
  leaves no queue_log line (FORMATS.md a.2). A join refused after the dialplan answered is
  indistinguishable from an abandon and stays ``abandon``.

``wait_seconds`` is ``duration`` for failed attempts (None for connected ones: the caller leg's
billsec counts from the dialplan's answer, not from the agent's). ``queue`` is the first
``lastdata`` argument when ``lastapp`` is Queue. One caller leg can yield several records (one per
agent ring attempt, step 06); each becomes an Attempt with the same call_id and the store merges
them. ``call_id`` is the ``uniqueid`` (= queue_log callid), or ``"cdr-" + sha1(line)[:24]`` when
the layout has none.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import re
from collections import Counter
from dataclasses import dataclass

from callback_queue.attempts import Attempt, DeadLetter, Origin, Outcome
from callback_queue.numbers import Normalizer

_CSV_BASE = (
    "accountcode", "src", "dst", "dcontext", "clid", "channel", "dstchannel", "lastapp",
    "lastdata", "start", "answer", "end", "duration", "billsec", "disposition", "amaflags",
)
_NEW = ("peeraccount", "linkedid", "sequence")
_CUSTOM_BASE = (
    "clid", "src", "dst", "dcontext", "channel", "dstchannel", "lastapp", "lastdata", "start",
    "answer", "end", "duration", "billsec", "disposition", "amaflags", "accountcode", "uniqueid",
    "userfield",
)


#: what an attempt can hold: waits in 32 bits, call ids of 128 characters
MAX_SECONDS = 2**31 - 1
MAX_CALL_ID = 128


def _index(names: tuple[str, ...]) -> dict[str, int]:
    return {name: i for i, name in enumerate(names)}


#: column name -> index, by field count
CSV_LAYOUTS: dict[int, dict[str, int]] = {
    16: _index(_CSV_BASE),
    17: _index(_CSV_BASE + ("uniqueid",)),
    18: _index(_CSV_BASE + ("uniqueid", "userfield")),
    19: _index(_CSV_BASE + _NEW),
    20: _index(_CSV_BASE + ("uniqueid",) + _NEW),
    21: _index(_CSV_BASE + ("uniqueid", "userfield") + _NEW),
}
CUSTOM_LAYOUTS: dict[int, dict[str, int]] = {
    19: _index(_CUSTOM_BASE + ("sequence",)),
    20: _index(_CUSTOM_BASE + ("linkedid", "sequence")),
    21: _index(_CUSTOM_BASE + _NEW),
}
_KNOWN_COLUMNS = frozenset(_CSV_BASE + _NEW + ("uniqueid", "userfield"))
_HEADER_ALIASES = {"calldate": "start"}
_HEADER_FIRST = frozenset({"accountcode", "clid", "calldate"})
_HEADER_REQUIRED = ("dst", "dcontext", "start", "disposition")

DISPOSITIONS = frozenset({"ANSWERED", "NO ANSWER", "BUSY", "FAILED", "CONGESTION", "CANCEL", "UNKNOWN"})
_FAILED_REASON = {
    "NO ANSWER": "no-answer",
    "BUSY": "busy",
    "CONGESTION": "congestion",
    "FAILED": "failed",
    "UNKNOWN": "failed",
    "CANCEL": "abandon",
    "ANSWERED": "abandon",
}

_CLID = re.compile(r'^(?:".*")?\s*<[^<>]*>$', re.DOTALL)
_CLID_NUMBER = re.compile(r"<([^<>]*)>\s*$")
_BARE_NUMBER = re.compile(r"^\+?[\d\s().-]+$")
_DATE = re.compile(r"^\s*\d{4}-\d{1,2}-\d{1,2}[ T]\d")
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True)
class CdrOptions:
    """What counts as an inbound hotline record, and how to read the file."""

    inbound_contexts: frozenset[str] = frozenset(
        {"from-pstn", "from-trunk", "from-external", "from-did-direct", "hotline-did"}
    )
    #: dst values that are the hotline's DIDs (matched verbatim)
    hotline_numbers: frozenset[str] = frozenset()
    #: "auto" | "csv" (cdr_csv column order) | "custom" (stock cdr_custom order, clid first)
    layout: str = "auto"
    #: zone of the CDR times (local time without zone unless usegmtime=yes)
    tz: datetime.tzinfo = datetime.UTC

    def __post_init__(self) -> None:
        if self.layout not in ("auto", "csv", "custom"):
            raise ValueError(f"CDR layout must be 'auto', 'csv' or 'custom', not {self.layout!r}")


class _Bad(Exception):
    """A field that makes the record unusable; the message is the dead letter's reason."""


class CdrParser:
    """Feeds CDR lines (bytes, one physical line each) and returns attempts."""

    def __init__(self, *, source: str, system: str, normalizer: Normalizer, options: CdrOptions) -> None:
        self.source = source
        self.system = system
        self.normalizer = normalizer
        self.options = options
        #: column mapping fixed by a header row, with the header's field count
        self._header: tuple[dict[str, int], int] | None = None
        #: records read but not inbound hotline calls, by their dcontext (why an import may find nothing)
        self.not_inbound: Counter[str] = Counter()

    def feed(self, line: bytes, position: str) -> Attempt | DeadLetter | None:
        """One line → Attempt (inbound caller leg), None (not one), or DeadLetter. Never raises."""
        try:
            return self._feed(line)
        except _Bad as bad:
            return DeadLetter(self.source, position, line, str(bad))
        except Exception as exc:  # a bug must not stop the import; keep the line and say so
            return DeadLetter(self.source, position, line, f"CDR parser error: {type(exc).__name__}: {exc}")

    # -- steps ---------------------------------------------------------------------------
    def _feed(self, line: bytes) -> Attempt | None:
        text = _decode(line).rstrip("\r\n").removeprefix("\ufeff")
        if not text.strip():
            return None
        try:
            fields = next(csv.reader([text], strict=True), None)
        except csv.Error as exc:
            raise _Bad(f"CDR line is not valid CSV: {exc}") from None
        if not fields:
            return None
        fields = ["" if f == "NULL" else f for f in fields]
        if fields[0].strip().lower() in _HEADER_FIRST:
            self._header = _header_mapping(fields)
            return None
        col = self._mapping(fields)

        def get(name: str) -> str:
            i = col.get(name)
            return fields[i].strip() if i is not None else ""

        disposition = get("disposition").upper()
        if disposition not in DISPOSITIONS:
            raise _Bad(f"unknown CDR disposition {_show(get('disposition'))} (expected one of "
                       "ANSWERED, NO ANSWER, BUSY, FAILED, CONGESTION, CANCEL, UNKNOWN)")
        opts = self.options
        if get("dcontext") not in opts.inbound_contexts and get("dst") not in opts.hotline_numbers:
            self.not_inbound[get("dcontext")] += 1
            return None
        started = self._time("start", get("start"))
        if started is None:
            raise _Bad("CDR start time is empty")
        answered = self._time("answer", get("answer"))
        ended = self._time("end", get("end"))
        duration = _int("duration", get("duration"))
        billsec = _int("billsec", get("billsec"))

        caller = get("src") or _clid_number(get("clid"))
        lastapp = get("lastapp")
        queue = None
        if lastapp.lower() == "queue":
            queue = get("lastdata").split(",", 1)[0].strip() or None
        dstchannel = get("dstchannel")
        if disposition == "ANSWERED" and dstchannel and (billsec or 0) > 0:
            outcome, reason = Outcome.CONNECTED, "connect"
        elif queue and not dstchannel and answered is None and duration == 0 and disposition != "ANSWERED":
            outcome, reason = Outcome.FAILED, "refused"
        else:
            outcome, reason = Outcome.FAILED, _FAILED_REASON[disposition]

        call_id = get("uniqueid") or "cdr-" + hashlib.sha1(line.rstrip(b"\r\n")).hexdigest()[:24]
        if len(call_id) > MAX_CALL_ID:
            raise _Bad(f"CDR uniqueid of {len(call_id)} characters (at most {MAX_CALL_ID})")
        return Attempt(
            system=self.system,
            call_id=call_id,
            caller=caller or None,
            number=self.normalizer.normalize(caller) if caller else None,
            started_ts=started,
            ended_ts=ended,
            outcome=outcome,
            reason=reason,
            wait_seconds=duration if outcome is Outcome.FAILED else None,
            queue=queue,
            origin=Origin.CDR,
        )

    def _mapping(self, fields: list[str]) -> dict[str, int]:
        """The column mapping for this line, or _Bad when its field count fits none."""
        n = len(fields)
        if self._header is not None:
            mapping, width = self._header
            if n != width:
                raise _Bad(f"CDR record has {n} fields; the header row has {width}")
            return mapping
        layout = self.options.layout
        if layout == "csv":
            if n in CSV_LAYOUTS:
                return CSV_LAYOUTS[n]
            raise _Bad(f"CDR record has {n} fields; expected 16-21 (cdr_csv)")
        if layout == "custom":
            if n in CUSTOM_LAYOUTS:
                return CUSTOM_LAYOUTS[n]
            raise _Bad(f"CDR record has {n} fields; expected 19-21 (cdr_custom)")
        if n not in CSV_LAYOUTS:
            raise _Bad(f"CDR record has {n} fields; expected 16-21 (cdr_csv) or 19-21 (cdr_custom)")
        if n not in CUSTOM_LAYOUTS or _looks_like_clid(fields[4]):
            return CSV_LAYOUTS[n]
        if _looks_like_clid(fields[0]):
            return CUSTOM_LAYOUTS[n]
        if _shape_score(fields, CUSTOM_LAYOUTS[n]) > _shape_score(fields, CSV_LAYOUTS[n]):
            return CUSTOM_LAYOUTS[n]
        return CSV_LAYOUTS[n]

    def _time(self, name: str, value: str) -> int | None:
        """'YYYY-MM-DD HH:MM:SS' (optionally .fraction) in options.tz → epoch; '' → None."""
        if not value:
            return None
        text = value
        if len(text) > 19 and text[19] == "." and text[20:].isdigit():
            text = text[:19]
        try:
            local = datetime.datetime.strptime(text, _TIME_FORMAT)
            return int(local.replace(tzinfo=self.options.tz).timestamp())
        except (ValueError, OverflowError, OSError):
            raise _Bad(f"CDR {name} {_show(value)} is not a 'YYYY-MM-DD HH:MM:SS' time") from None


def _header_mapping(fields: list[str]) -> tuple[dict[str, int], int]:
    """Column name → index from a header row; _Bad when it lacks what a record needs."""
    mapping: dict[str, int] = {}
    for i, raw in enumerate(fields):
        name = raw.strip().lower()
        name = _HEADER_ALIASES.get(name, name)
        if name in _KNOWN_COLUMNS and name not in mapping:
            mapping[name] = i
    missing = [c for c in _HEADER_REQUIRED if c not in mapping]
    if "src" not in mapping and "clid" not in mapping:
        missing.append("src or clid")
    if missing:
        raise _Bad(f"CDR header row lacks the columns {', '.join(missing)}")
    return mapping, len(fields)


def _decode(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return line.decode("latin-1")


def _looks_like_clid(value: str) -> bool:
    return bool(_CLID.match(value.strip()))


def _shape_score(fields: list[str], mapping: dict[str, int]) -> int:
    """How many of (disposition, start) sit where this mapping expects them."""
    return (fields[mapping["disposition"]].strip().upper() in DISPOSITIONS) + bool(
        _DATE.match(fields[mapping["start"]]))


def _clid_number(clid: str) -> str | None:
    """The number of a clid: '"name" <number>' → number; a bare number → itself."""
    m = _CLID_NUMBER.search(clid)
    if m:
        return m.group(1).strip() or None
    clid = clid.strip()
    return clid if clid and _BARE_NUMBER.match(clid) else None


def _int(name: str, value: str) -> int | None:
    if not value:
        return None
    if value.isascii() and value.isdigit() and len(value) <= 10 and int(value) <= MAX_SECONDS:
        return int(value)
    raise _Bad(f"CDR {name} {_show(value)} is not a whole number of seconds (0 to {MAX_SECONDS})")


def _show(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "…")
