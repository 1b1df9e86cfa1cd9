"""Operators' commands: callbacks list/show/claim/close/release/cancel, dead letters."""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import click

from .cli import Ctx, _queue, _store, cli, default_operator, with_config

FORMATS = click.Choice(["table", "json", "csv"])
LIST_COLUMNS = ("id", "state", "number", "failures", "triggered_at", "due_at", "dial_attempts", "claimed_by",
                "lease_until", "outcome", "priority", "kind", "closed_at", "close_reason")


def _local(dt: datetime | None, tz: Any) -> str:
    return dt.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S") if dt else ""


def _emit(rows: list[dict[str, Any]], fmt: str, columns: tuple[str, ...], title: str | None = None,
          column_options: dict[str, dict[str, Any]] | None = None) -> None:
    """Rows as a JSON array, CSV, or a table (`column_options`: rich's add_column keywords per column)."""
    if fmt == "json":
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
        click.echo(buf.getvalue(), nl=False)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stdout, width=_table_width())
    table = Table(title=title, show_lines=False)
    for c in columns:
        table.add_column(c.replace("_", " "), **(column_options or {}).get(c, {}))
    for r in rows:  # values are data, not rich markup: a raw line or a note may hold "[/...]" or end in "\"
        table.add_row(*(console.render_str("" if r.get(c) is None else str(r.get(c)), markup=False)
                        for c in columns))
    console.print(table)


def _table_width() -> int | None:
    """The terminal's width (rich finds it); 200 columns when the output is not a terminal."""
    return None if sys.stdout.isatty() else 200


def _table_row(c: Any, tz: Any, show: bool) -> dict[str, Any]:
    from callback_queue.numbers import mask

    d = c.as_json()
    for k in ("triggered_at", "due_at", "lease_until", "closed_at"):
        d[k] = _local(getattr(c, k), tz)
    d["number"] = c.number if show else mask(c.number)
    return d


@cli.group()
def callbacks() -> None:
    """The callback queue: list, show, claim, close, release, cancel."""


@callbacks.command("list")
@click.option("--state", "states", multiple=True,
              help="Only these states (repeatable): pending, scheduled, dialing, retry_wait, reached, cancelled, "
                   "expired, unreachable, ... ; 'open' means all open states.")
@click.option("--due", is_flag=True, help="Only callbacks that can be claimed now.")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most this many rows.")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True,
              help="json and csv carry full E.164 numbers and UTC times; the table masks numbers.")
@click.option("--show-numbers", is_flag=True, help="Show full numbers in the table.")
@with_config
def cb_list(obj: Ctx, states: tuple[str, ...], due: bool, limit: int | None, fmt: str, show_numbers: bool) -> None:
    """List callbacks: open ones first; more failures first, then longest waiting."""
    from callback_queue.callbacks import OPEN_STATES, State

    wanted: list[str] = []
    for s in states:
        if s == "open":
            wanted += [x.value for x in OPEN_STATES]
        else:
            try:
                wanted.append(State(s).value)
            except ValueError:
                known = ", ".join([x.value for x in State] + ["open"])
                raise click.BadParameter(f"unknown state {s!r}; known: {known}", param_hint="--state") from None
    items = _queue(obj).list(states=wanted or None, due=due, limit=limit)
    if fmt == "table":
        tz = obj.settings.tz
        _emit([_table_row(c, tz, show_numbers) for c in items], fmt,
              ("id", "state", "number", "failures", "triggered_at", "due_at", "dial_attempts", "claimed_by",
               "outcome"), title=f"callbacks ({len(items)}; times in {obj.settings.daemon.timezone})")
    else:
        _emit([c.as_json() for c in items], fmt, LIST_COLUMNS)


@callbacks.command("show")
@click.argument("callback_id", type=int)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--show-numbers", is_flag=True, help="Show full numbers in the table.")
@with_config
def cb_show(obj: Ctx, callback_id: int, fmt: str, show_numbers: bool) -> None:
    """One callback: the attempts that triggered it and its history."""
    from callback_queue.clock import utc_from_ts

    d = _queue(obj).get(callback_id)
    tz = obj.settings.tz
    if fmt == "json":
        click.echo(json.dumps({
            "callback": d.callback.as_json(),
            "attempts": [_attempt_json(a) for a in d.attempts],
            "events": [{"at": e.at.isoformat().replace("+00:00", "Z"), "actor": e.actor, "event": e.event,
                        "from_state": e.from_state, "to_state": e.to_state, "detail": e.detail} for e in d.events],
        }, ensure_ascii=False, indent=2))
        return
    c = d.callback
    row = _table_row(c, tz, show_numbers)
    click.echo(f"callback {c.id}  {row['number']}  {c.state.value}  ({c.kind})")
    click.echo(f"  failures in a row: {c.failures}; first {_local(c.episode_start, tz)}, "
               f"triggered {_local(c.triggered_at, tz)}, last {_local(c.last_failed_at, tz)}")
    click.echo(f"  due {_local(c.due_at, tz)}; calls made {c.dial_attempts}"
               + (f"; claimed by {c.claimed_by} until {_local(c.lease_until, tz)}" if c.claimed_by else "")
               + (f"; outcome {c.outcome}" if c.outcome else "")
               + (f" ({c.close_reason})" if c.close_reason else ""))
    _emit([{"call_id": a.call_id, "started": _local(utc_from_ts(a.started_ts), tz), "outcome": a.outcome,
            "reason": a.reason, "wait_s": a.wait_seconds, "queue": a.queue, "source": a.origin}
           for a in d.attempts], "table", ("call_id", "started", "outcome", "reason", "wait_s", "queue", "source"),
          title="attempts")
    _emit([{"at": _local(e.at, tz), "actor": e.actor, "event": e.event, "change": _change(e.from_state, e.to_state),
            "detail": json.dumps(_local_detail(e.detail, tz), ensure_ascii=False, sort_keys=True) if e.detail else ""}
           for e in d.events], "table", ("at", "actor", "event", "change", "detail"), title="history")


def _attempt_json(a: Any) -> dict[str, Any]:
    """An attempt's fields, its epoch started_ts/ended_ts each followed by the same time as UTC ISO
    (`started_at`, `ended_at`: "...Z", as the API's timeline writes an attempt's time)."""
    from dataclasses import fields

    out: dict[str, Any] = {}
    for f in fields(a):
        out[f.name] = value = getattr(a, f.name)
        if f.name in ("started_ts", "ended_ts"):
            out[f.name.removesuffix("_ts") + "_at"] = _utc_iso(value)
    return out


def _utc_iso(ts: int | None) -> str | None:
    from callback_queue.clock import utc_from_ts

    return None if ts is None else utc_from_ts(ts).isoformat().replace("+00:00", "Z")


def _change(before: str | None, after: str | None) -> str:
    """`pending -> dialing`; empty for an event that changed no state (an SMS event)."""
    return f"{before or ''} -> {after or ''}" if before or after else ""


#: keys of the times in an event's detail (lease_until, retry_at, due_at, window_start, ...)
_TIME_KEYS = ("_at", "_until", "_start", "_end")


def _local_detail(detail: dict[str, Any], tz: Any) -> dict[str, Any]:
    """The detail with its times (stored as UTC ISO) in local time, as the table's "at" column."""
    out = dict(detail)
    for k, v in detail.items():
        if k.endswith(_TIME_KEYS) and isinstance(v, str):
            try:
                when = datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                continue
            if when.tzinfo is not None:
                out[k] = _local(when, tz)
    return out


@callbacks.command("claim")
@click.option("--operator", default=None, help="Who claims (default: $CALLBACKD_OPERATOR or the login name).")
@click.option("--count", type=click.IntRange(1, 100), default=1, show_default=True)
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@with_config
def cb_claim(obj: Ctx, operator: str | None, count: int, fmt: str) -> None:
    """Claim the next due callbacks; the claim is a lease that expires ([queue] lease).

    Nothing due: "nothing is due" on stderr (json and csv: an empty document on stdout too);
    exit 0 even when nothing was due.
    """
    op = operator or default_operator()
    got = _queue(obj).claim(op, count)
    if not got:
        click.echo("nothing is due", err=True)
        if fmt == "table":
            return
    if fmt == "table":
        # the claimer is about to call: the table shows the full number
        _emit([_table_row(c, obj.settings.tz, True) for c in got], fmt,
              ("id", "number", "failures", "triggered_at", "lease_until"), title=f"claimed by {op}")
    else:
        _emit([c.as_json() for c in got], fmt, LIST_COLUMNS)


@contextmanager
def _force_hint(verb: str) -> Iterator[None]:
    """Someone else's claim: say what --force does."""
    from callback_queue.errors import LeaseLost

    try:
        yield
    except LeaseLost as exc:
        raise LeaseLost(f"{exc}; add --force to {verb} it anyway") from None


@callbacks.command("close")
@click.argument("callback_id", type=int)
@click.option("--outcome", required=True,
              type=click.Choice(["reached", "no-answer", "busy", "wrong-number", "declined"]))
@click.option("--note", default=None, help="Free text kept in the history.")
@click.option("--operator", default=None, help="Who closes (default: $CALLBACKD_OPERATOR or the login name).")
@click.option("--force", is_flag=True, help="Close a callback claimed by someone else.")
@with_config
def cb_close(obj: Ctx, callback_id: int, outcome: str, note: str | None, operator: str | None, force: bool) -> None:
    """Record the outcome of a claimed callback (no-answer and busy are retried)."""
    with _force_hint("close"):
        c = _queue(obj).close(callback_id, operator or default_operator(), outcome, note, force=force)
    extra = f", next try {_local(c.due_at, obj.settings.tz)}" if c.state.value == "retry_wait" else ""
    click.echo(f"callback {c.id}: {c.state.value}{extra}")


@callbacks.command("release")
@click.argument("callback_id", type=int)
@click.option("--operator", default=None)
@click.option("--note", default=None)
@click.option("--force", is_flag=True, help="Release a callback claimed by someone else.")
@with_config
def cb_release(obj: Ctx, callback_id: int, operator: str | None, note: str | None, force: bool) -> None:
    """Give a claimed callback back to the queue."""
    with _force_hint("release"):
        c = _queue(obj).release(callback_id, operator or default_operator(), force=force, note=note)
    click.echo(f"callback {c.id}: {c.state.value}")


@callbacks.command("cancel")
@click.argument("callback_id", type=int)
@click.option("--reason", required=True, help="Why (kept in the history).")
@click.option("--operator", default=None)
@with_config
def cb_cancel(obj: Ctx, callback_id: int, reason: str, operator: str | None) -> None:
    """Cancel an open callback."""
    c = _queue(obj).cancel(callback_id, operator or default_operator(), reason)
    click.echo(f"callback {c.id}: {c.state.value}")


@cli.group()
def deadletters() -> None:
    """Input that could not be understood, kept with its reason."""


@deadletters.command("list")
@click.option("--source", default=None, help="Only this source (e.g. queue_log:pbx).")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True,
              help="json and csv carry the whole line, as `raw` (escaped text) and `raw_base64` (its exact "
                   "bytes), and UTC times; the table shows local times and the start of `raw`.")
@click.option("--show-numbers", is_flag=True, help="Table: show runs of 7 or more digits (phone numbers, "
                                                   "but also times) in full instead of masked.")
@with_config
def dl_list(obj: Ctx, source: str | None, limit: int, fmt: str, show_numbers: bool) -> None:
    """Newest first: where each line was read, why it was refused, and the line itself.

    `raw` is the line as text, escaped: \\xNN for a byte that is not UTF-8 or an ASCII control character,
    \\n, \\r, \\t, \\\\ for a backslash, \\uNNNN for an invisible Unicode character; the rest as is.
    """
    import base64

    import sqlalchemy as sa

    from callback_queue import schema as t

    dl = t.dead_letters
    q = sa.select(dl).order_by(dl.c.id.desc()).limit(limit)
    count = sa.select(sa.func.count()).select_from(dl)
    if source:
        q, count = q.where(dl.c.source == source), count.where(dl.c.source == source)
    with _store(obj).read() as conn:
        rows = conn.execute(q).all()
        total = conn.execute(count).scalar()
    if fmt != "table":
        _emit([{"id": r.id, "source": r.source, "position": r.position, "reason": r.reason, "raw": escape_raw(r.raw),
                "raw_base64": base64.b64encode(r.raw).decode(),
                "created_at": r.created_at.isoformat().replace("+00:00", "Z")} for r in rows], fmt,
              ("id", "source", "position", "reason", "raw", "raw_base64", "created_at"))
        return
    tz = obj.settings.tz
    _emit([{"id": r.id, "created_at": _local(r.created_at, tz), "source": r.source, "position": r.position,
            "reason": r.reason,
            "raw": _raw_cell(r.raw, show_numbers)} for r in rows],
          fmt, ("id", "created_at", "source", "position", "reason", "raw"),
          title=f"dead letters ({len(rows)} of {total}; times in {obj.settings.daemon.timezone})",
          column_options=DL_COLUMNS)


#: terminal columns of a dead letter's raw line the table shows (a CJK character takes two)
RAW_SHOWN = 60
#: the dead-letter table fits a terminal: the reason and a long position wrap, raw is cut, the rest stays whole
DL_COLUMNS: dict[str, dict[str, Any]] = {
    "id": {"no_wrap": True}, "created_at": {"no_wrap": True, "min_width": 19},
    "source": {"min_width": 6, "overflow": "fold"}, "position": {"min_width": 8, "max_width": 28, "overflow": "fold"},
    "reason": {"min_width": 10, "max_width": 36, "overflow": "fold"}, "raw": {"min_width": 10, "overflow": "fold"},
}
_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
#: a run of 7 or more digits in free text (a dead letter's raw line): maybe a phone number, masked in tables
_DIGIT_RUN = re.compile(r"\+?\d{7,}")


def _raw_cell(raw: bytes, show_numbers: bool) -> str:
    """The start of a dead letter's raw line for the table: escaped, digit runs masked, cut to RAW_SHOWN."""
    text = escape_raw(raw[:RAW_SHOWN * 4])
    return _clip(text if show_numbers else mask_digits(text), RAW_SHOWN)


def mask_digits(text: str) -> str:
    """Free text with every run of 7 or more digits masked as a number is (`numbers.mask`)."""
    from callback_queue.numbers import mask

    return _DIGIT_RUN.sub(lambda m: mask(m.group()), text)
_INVISIBLE = frozenset({"Cc", "Cf", "Co", "Cn", "Zl", "Zp"})


def escape_raw(raw: bytes) -> str:
    """A raw line as one line of text that gives back its bytes: UTF-8 as is, except a byte that is not UTF-8
    or an ASCII control character as \\xNN (\\n, \\r, \\t for those three), a backslash as \\\\, and an
    invisible character (control, format, line or paragraph separator, unassigned) as \\uNNNN."""
    import unicodedata

    out = []
    for ch in raw.decode("utf-8", "surrogateescape"):
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:                 # a byte that is not UTF-8 (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif unicodedata.category(ch) in _INVISIBLE:
            out.append(f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def _clip(text: str, cells: int) -> str:
    """At most `cells` terminal cells of text (a CJK character takes two), "…" at the end if cut."""
    from rich.text import Text

    shown = Text(text)
    shown.truncate(cells, overflow="ellipsis")
    return shown.plain


@cli.command()
@click.option("--dir", "folder", type=click.Path(file_okay=False), default="demo", show_default=True,
              help="Folder for the demo's config, database and queue_log.")
@click.option("--calls-per-minute", type=click.FloatRange(0.1, 600), default=20.0, show_default=True)
@click.option("--duration", type=click.FloatRange(1), default=None, help="Stop after this many seconds.")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="HTTP port of the console and rating pages (default: the demo config's, 8080 when new).")
def demo(folder: str, calls_per_minute: float, duration: float | None, port: int | None) -> None:
    """Run the daemon on SQLite, tailing a queue_log that a bundled traffic player writes."""
    import threading
    from pathlib import Path

    from callback_queue.errors import ConfigError

    from .app import Daemon
    from .demo import DEMO_CONFIG, TrafficPlayer
    from .logs import configure
    from .settings import load_settings

    root = Path(folder).absolute()
    root.mkdir(parents=True, exist_ok=True)
    cfg = root / "callbackd.toml"
    if not cfg.exists():
        new_port = port or 8080
        cfg.write_text(DEMO_CONFIG.replace(":8080", f":{new_port}").replace("port = 8080", f"port = {new_port}"),
                       encoding="utf-8")
    try:
        settings = load_settings(cfg)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if port is not None and settings.http.port != port:     # an existing demo folder, another port this time
        settings = settings.model_copy(update={"http": settings.http.model_copy(
            update={"port": port, "public_url": f"http://127.0.0.1:{port}"})})
    configure(settings.daemon.log_level, settings.daemon.log_format)
    from .app import open_store

    store = open_store(settings)
    store.upgrade()
    assert settings.sources.queue_log is not None
    player = TrafficPlayer(settings.sources.queue_log.path, calls_per_minute=calls_per_minute)
    click.echo(f"demo folder: {root}\n"
               f"traffic player appends to {settings.sources.queue_log.path}\n"
               f"in another terminal, watch the queue:\n"
               f"  .venv/bin/callbackd --config {cfg} callbacks list\n"
               f"  .venv/bin/callbackd --config {cfg} callbacks claim --operator alice\n"
               f"web console: http://{settings.http.host}:{settings.http.port}/console/ (a user first: "
               f".venv/bin/callbackd --config {cfg} users add alice --role operator)\n"
               f"Ctrl-C stops.\n", err=True)
    t = threading.Thread(target=player.run, kwargs={"duration": duration}, name="traffic-player", daemon=True)
    t.start()
    d = Daemon(settings, store=store)
    timer = threading.Timer(duration + 2, d.stop) if duration is not None else None
    if timer is not None:
        timer.start()
    try:
        code = d.run()
    except ConfigError as exc:      # e.g. the port is taken: one line, as under `callbackd run`
        click.echo(f"callbackd: {exc}", err=True)
        code = 78
    finally:
        player.stop()
        t.join(timeout=5)
        if timer is not None:
            timer.cancel()
    sys.exit(code)
