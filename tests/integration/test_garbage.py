"""Bad input is dead-lettered, never dropped, and never disturbs the good lines around it (invariant 9).

A good file and the same file with garbage lines mixed in at random (seeded) positions are imported
into separate stores: the attempts (and the callbacks they open) must be identical, and every garbage
line must be in dead_letters with its position (path:byte offset), a reason, and its raw bytes exactly
as written. Every garbage line is built to be unambiguously malformed for the parser at hand: a
well-formed line with an unknown verb, for instance, is tolerated by design and is not garbage.
"""

from __future__ import annotations

import csv
import random
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from callback_queue import schema as t
from callback_queue.clock import FakeClock
from callback_queue.ingest import Ingestor
from callback_queue.store import Store
from daemon.app import cdr_parser, detect_rules, normalizer, queue_log_parser
from daemon.settings import Settings
from daemon.sources.pipeline import import_file

#: after the generated data (from 2026-11-01, Beijing); with a 14-day lookback all of it counts, so
#: the good lines open callbacks and those are compared too
NOW = datetime(2026, 11, 8, 16, 30, tzinfo=UTC)


def settings(path: Path) -> Settings:
    return Settings.model_validate({
        "daemon": {"timezone": "UTC"},
        "detect": {"threshold": 3, "lookback": "14d", "min_wait_seconds": 5, "default_region": "CN"},
        "sources": {
            "queue_log": {"path": str(path), "system": "pbx"},
            "cdr": {"path": str(path), "system": "pbx", "timezone": "UTC", "inbound_contexts": ["hotline-did"]},
        },
    })


def import_one(store: Store, path: Path, kind: str) -> None:
    s = settings(path)
    norm = normalizer(s)
    parser = queue_log_parser(s, norm) if kind == "queue_log" else cdr_parser(s, norm)
    import_file(path, parser, Ingestor(store, FakeClock(NOW), detect_rules(s)))


def snapshot(store: Store) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(attempts without ids, callbacks as (number, state, failures, episode_start, triggered_at))."""
    a, cb = t.attempts, t.callbacks
    with store.read() as c:
        att = c.execute(sa.select(*[col for col in a.columns if col.name != "id"])).all()
        cbs = c.execute(sa.select(cb.c.number, cb.c.state, cb.c.failures, cb.c.episode_start,
                                  cb.c.triggered_at, cb.c.last_failed_at, cb.c.closed_at)).all()
    return sorted(tuple(r) for r in att), sorted(tuple(r) for r in cbs)


def dead_letters(store: Store) -> list[tuple[str, str, bytes, str]]:
    d = t.dead_letters
    with store.read() as c:
        return [(r.source, r.position, bytes(r.raw), r.reason)
                for r in c.execute(sa.select(d.c.source, d.c.position, d.c.raw, d.c.reason))]


def write_mixed(path: Path, good: list[bytes], garbage: list[tuple[str, bytes]],
                rng: random.Random) -> dict[str, tuple[str, bytes]]:
    """Write good lines with the garbage at random positions; position -> (kind, raw) of the garbage."""
    items: list[tuple[str | None, bytes]] = [(None, g) for g in good]
    for kind, raw in garbage:
        items.insert(rng.randint(0, len(items)), (kind, raw))
    expected: dict[str, tuple[str, bytes]] = {}
    offset = 0
    with open(path, "wb") as f:
        for kind, raw in items:
            assert b"\n" not in raw
            if kind is not None:
                expected[f"{path}:{offset}"] = (kind, raw)
            f.write(raw + b"\n")
            offset += len(raw) + 1
    return expected


def check(store: Store, clean_store: Store, expected: dict[str, tuple[str, bytes]]) -> None:
    """Every problem at once, so one failing kind of garbage does not hide another."""
    good_run, garbage_run = snapshot(clean_store), snapshot(store)
    problems = []
    if not good_run[0] or not good_run[1]:
        problems.append("the good lines gave no attempts or no callbacks: the comparison proves nothing")
    if garbage_run[0] != good_run[0]:
        changed = set(garbage_run[0]) ^ set(good_run[0])
        problems.append(f"the garbage changed {len(changed)} attempt rows, e.g. {sorted(changed, key=repr)[:4]}")
    if garbage_run[1] != good_run[1]:
        problems.append("the garbage changed the callbacks")
    if dead_letters(clean_store):
        problems.append(f"the clean file gave dead letters: {dead_letters(clean_store)[:3]}")
    dead = dead_letters(store)
    got = {pos: raw for _, pos, raw, _ in dead}
    missing = {pos: v for pos, v in expected.items() if pos not in got}
    if missing:
        problems.append(f"{len(missing)} of {len(expected)} garbage lines were not dead-lettered, by kind "
                        f"{dict(Counter(k for k, _ in missing.values()))}, e.g. "
                        f"{[raw for _, raw in list(missing.values())[:5]]}")
    extra = sorted(set(got) - set(expected))
    if extra:
        problems.append(f"good lines dead-lettered: {[(p, got[p]) for p in extra[:5]]}")
    if len(dead) != len(got):
        problems.append(f"{len(dead) - len(got)} positions dead-lettered more than once")
    for source, pos, raw, reason in dead:
        if pos in expected and raw != expected[pos][1]:
            problems.append(f"raw bytes at {pos} differ from what was written: {raw!r} != {expected[pos][1]!r}")
        if not reason.strip() or not source.strip():
            problems.append(f"empty reason or source for {raw!r}")
    assert not problems, "\n".join(problems)


# -- queue_log --------------------------------------------------------------------------------------------

def good_queue_log(shared: Path, tmp_path: Path, n: int = 5000) -> list[bytes]:
    out = tmp_path / "generated.queue_log"
    subprocess.run([sys.executable, str(shared / "bench" / "gen_queue_log.py"), "--calls-per-day", "400",
                    "--days", "7", "--start", "2026-11-01", "--seed", "11", "-o", str(out)],
                   check=True, capture_output=True)
    lines = out.read_bytes().split(b"\n")[:n]
    assert len(lines) == n
    return lines


_CLOSE_BAD_COUNTS = {  # data-field counts no Asterisk version (1.4-22) writes, FORMATS.md a.2
    b"ABANDON": (0, 1, 2, 4, 5),          # always position|origposition|waittime
    b"EXITWITHTIMEOUT": (0, 2, 4, 5),     # position, or position|origposition|waittime
    b"CONNECT": (0, 1, 4, 5),             # holdtime|bridged-uniqueid[|ringtime]
}
_BAD_TIMES = [b"17957x4427", b"", b"abc", b"NaN", b"1795772427.5.1", b"t1795772427", b"1,795,772,427", b"--"]
_BAD_UTF8 = [b"\xff", b"\xc3\x28", b"\xe2\x82", b"\x80", b"\xfe\xfe"]


def queue_log_garbage(rng: random.Random, good: list[bytes]) -> tuple[str, bytes]:
    kind = rng.choice(["random-bytes", "cut-before-verb", "wrong-field-count", "bad-time", "bad-utf8"])
    line = rng.choice(good)
    f = line.split(b"|")
    if kind == "random-bytes":
        # no '|' and no newline: fewer than 5 fields whatever the bytes are
        allowed = [b for b in range(256) if b not in (0x0A, 0x7C)]
        return kind, bytes(rng.choice(allowed) for _ in range(rng.randint(1, 100)))
    if kind == "cut-before-verb":
        fourth = [i for i, ch in enumerate(line) if ch == 0x7C][3]
        return kind, line[:rng.randint(1, fourth)]  # at most 3 '|': the verb never arrives
    if kind == "wrong-field-count":
        closing = [g for g in good if g.split(b"|")[4] in _CLOSE_BAD_COUNTS]
        f = rng.choice(closing).split(b"|")
        n = rng.choice(_CLOSE_BAD_COUNTS[f[4]])
        data = (f[5:] + [str(rng.randint(1, 99)).encode() for _ in range(5)])[:n]  # numbers, no trailing "|"
        return kind, b"|".join(f[:5] + data)
    if kind == "bad-time":
        return kind, b"|".join([rng.choice(_BAD_TIMES), *f[1:]])
    # invalid UTF-8 inside the callid or the verb
    i = rng.choice([1, 4])
    cut = rng.randint(0, len(f[i]))
    f[i] = f[i][:cut] + rng.choice(_BAD_UTF8) + f[i][cut:]
    return kind, b"|".join(f)


def test_queue_log_with_garbage(store: Store, tmp_path: Path, shared: Path) -> None:
    rng = random.Random(20261127)
    good = good_queue_log(shared, tmp_path)
    garbage = [queue_log_garbage(rng, good) for _ in range(1000)]
    assert set(Counter(k for k, _ in garbage)) == {"random-bytes", "cut-before-verb", "wrong-field-count",
                                                   "bad-time", "bad-utf8"}
    clean = tmp_path / "clean.queue_log"
    clean.write_bytes(b"".join(g + b"\n" for g in good))
    mixed = tmp_path / "mixed.queue_log"
    expected = write_mixed(mixed, good, garbage, rng)

    clean_store = Store(f"sqlite:///{tmp_path / 'clean.db'}")
    clean_store.upgrade()
    try:
        import_one(clean_store, clean, "queue_log")
        import_one(store, mixed, "queue_log")
        check(store, clean_store, expected)
    finally:
        clean_store.dispose()


def test_queue_log_unicode_digits_are_dead_lettered_not_a_crash(store: Store, tmp_path: Path) -> None:
    """str.isdigit() is true for '²' and '①', which int() refuses: a time or a wait written with
    them must be a dead letter, not an exception that stops the import (and wedges a live tail)."""
    good = [b"1795772422|1795772422.1|hotline|NONE|ENTERQUEUE||13812345678|1",
            b"1795772427|1795772422.1|hotline|NONE|EXITWITHTIMEOUT|1|1|5"]
    bad = [b"\xc2\xb2|1795772430.2|hotline|NONE|ENTERQUEUE||13812345679|1",   # time '²'
           b"1795772433|1795772431.3|hotline|NONE|ABANDON|1|1|\xc2\xb2",        # waittime '²'
           b"1795772434|1795772431.4|hotline|NONE|CONNECT|\xe2\x91\xa0|1795772434.5|1"]  # holdtime '①'
    path = tmp_path / "unicode_digits.queue_log"
    expected = write_mixed(path, good, [("unicode-digit", b) for b in bad], random.Random(1))
    try:
        import_one(store, path, "queue_log")
    except Exception as exc:  # noqa: BLE001 - the point: the parser must not raise
        raise AssertionError(f"the import stopped on bad input: {type(exc).__name__}: {exc}") from exc
    got = {pos: raw for _, pos, raw, _ in dead_letters(store)}
    assert got == {pos: raw for pos, (_, raw) in expected.items()}
    assert [r[1] for r in snapshot(store)[0]] == ["1795772422.1"]


# -- CDR --------------------------------------------------------------------------------------------------

def _q(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _date(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def good_cdr(rng: random.Random, n: int = 3000) -> list[bytes]:
    """cdr_csv with loguniqueid + loguserfield (18 columns, as in the captures): inbound caller legs
    (connected, answered-then-abandoned, never answered) and agent legs that are not inbound."""
    pool = [f"13{rng.randrange(10**9):09d}" for _ in range(300)]
    lines = []
    ts = 1793491200  # 2026-11-01 00:00 UTC
    for i in range(n):
        ts += rng.randint(20, 200)
        num = rng.choice(pool)
        uid = f"{ts}.{i}"
        dur = rng.randint(1, 300)
        u = rng.random()
        ctx, dst, dstchan, answer, billsec, disp = "hotline-did", "1000", "", _date(ts), dur, "ANSWERED"
        if u < 0.55:
            dstchan = f"SIP/agent{rng.randint(100, 140)}-{i:08x}"
        elif u < 0.8:
            pass  # the dialplan answered, nobody took the call
        elif u < 0.9:
            answer, billsec, disp = "", 0, rng.choice(["NO ANSWER", "BUSY", "FAILED"])
        else:
            ctx, dst, dstchan = "agents", str(rng.randint(100, 140)), ""
        fields = [_q(""), _q(num), _q(dst), _q(ctx), _q(f'"Citizen {num}" <{num}>'), _q(f"SIP/trunk-{i:08x}"),
                  _q(dstchan), _q("Queue"), _q("hotline,,,,300"), _q(_date(ts)), _q(answer) if answer else "",
                  _q(_date(ts + dur)), str(dur), str(billsec), _q(disp), _q("DOCUMENTATION"), _q(uid), _q("")]
        lines.append(",".join(fields).encode())
    return lines


def _inbound(good: list[bytes]) -> list[bytes]:
    return [g for g in good if b'"hotline-did"' in g]


def _set_field(line: bytes, index: int, value: bytes) -> bytes:
    """Replace one field of a generated line (its fields never contain a quoted comma but lastdata)."""
    text = line.decode()
    fields = next(csv.reader([text]))
    out = []
    for i, v in enumerate(fields):
        if i == index:
            out.append(value)
        elif i in (12, 13):  # duration, billsec: unquoted
            out.append(v.encode())
        elif i == 10 and not v:  # an unset answer time is an empty, unquoted field
            out.append(b"")
        else:
            out.append(_q(v).encode())
    return b",".join(out)


def _csv_fields(raw: bytes) -> int | None:
    """Field count as the CDR parser's csv reading sees it, None if it is not valid CSV."""
    text = raw.decode("utf-8", "replace")
    try:
        return len(next(csv.reader([text], strict=True), []))
    except csv.Error:
        return None


def cdr_garbage(rng: random.Random, good: list[bytes]) -> tuple[str, bytes]:
    kinds = ["random-bytes", "cut", "wrong-field-count", "bad-number", "bad-time", "bad-disposition",
             "broken-quoting"]
    kind = rng.choice(kinds)
    line = rng.choice(_inbound(good))
    if kind == "random-bytes":
        # no comma, quote or newline: one field, never a header; and something that is not blank
        allowed = [b for b in range(256) if b not in (0x0A, 0x2C, 0x22)]
        while True:
            raw = bytes(rng.choice(allowed) for _ in range(rng.randint(1, 100)))
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
            if text.rstrip("\r\n").removeprefix("\ufeff").strip():
                return kind, raw
    if kind == "cut":
        while True:  # cut anywhere before the start time: fewer than 16 fields, or an open quote
            raw = line[:rng.randint(1, line.index(b'"2026-'))]
            n = _csv_fields(raw)
            if n is None or n < 16:
                return kind, raw
    if kind == "wrong-field-count":
        k = rng.choice([-3, -4, -8, 4, 5, 7])  # 15, 14, 10, 22, 23, 25 fields: no layout has them
        raw = line + b',"x"' * k if k > 0 else b",".join(line.split(b",")[:k])
        assert _csv_fields(raw) not in range(16, 22)
        return kind, raw
    if kind == "bad-number":
        return kind, _set_field(line, rng.choice([12, 13]), rng.choice([b"5s", b"abc", b"-3", b"3.5", b'"x"']))
    if kind == "bad-time":
        return kind, _set_field(line, rng.choice([9, 11]), rng.choice(
            [b'"2026-13-45 25:61:00"', b'"yesterday"', b'"27/11/2026 09:40:22"', b'"2026-11-27"']))
    if kind == "bad-disposition":
        return kind, _set_field(line, 14, rng.choice([b'"ANSWERD"', b'"HUNG UP"', b'"ANSWERED\xff"', b'"42"']))
    # broken quoting (as in vendor DB dumps): ""Citizen N" <N>"
    fields = line.split(b",")
    fields[4] = fields[4][1:-1].replace(b'""', b'"', 1)
    raw = b",".join(fields)
    assert _csv_fields(raw) is None
    return kind, raw


def test_cdr_with_garbage(store: Store, tmp_path: Path) -> None:
    rng = random.Random(12345)
    good = good_cdr(rng)
    garbage = [cdr_garbage(rng, good) for _ in range(600)]
    assert len(set(Counter(k for k, _ in garbage))) == 7
    clean = tmp_path / "clean.csv"
    clean.write_bytes(b"".join(g + b"\n" for g in good))
    mixed = tmp_path / "mixed.csv"
    expected = write_mixed(mixed, good, garbage, rng)

    clean_store = Store(f"sqlite:///{tmp_path / 'clean.db'}")
    clean_store.upgrade()
    try:
        import_one(clean_store, clean, "cdr")
        import_one(store, mixed, "cdr")
        check(store, clean_store, expected)
    finally:
        clean_store.dispose()


def test_cdr_garbage_builders_make_what_they_claim() -> None:
    """The CDR builders rewrite fields of good lines: a rewrite must change only the field it names,
    or the garbage test would prove nothing about the kind it claims."""
    good = good_cdr(random.Random(3), 200)
    for line in _inbound(good)[:20]:
        assert _csv_fields(line) == 18
        fields = next(csv.reader([line.decode()]))
        # rewriting a field with its own value gives the line back, byte for byte
        for idx in (9, 12, 13, 14):
            same = fields[idx].encode() if idx in (12, 13) else _q(fields[idx]).encode()
            assert _set_field(line, idx, same) == line
        for idx, value in [(12, b"abc"), (9, b'"yesterday"'), (14, b'"ANSWERD"')]:
            changed = next(csv.reader([_set_field(line, idx, value).decode()]))
            assert changed[idx] == value.decode().strip('"')
            assert changed[:idx] + changed[idx + 1:] == fields[:idx] + fields[idx + 1:]
