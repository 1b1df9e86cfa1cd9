"""SMS fallback commands: `sms preview|list|send-now`, `followups add|import|list`, `dnc add|remove|list`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from .cli import Ctx, _setup_logs, _store, cli, default_operator, with_config
from .cli_callbacks import FORMATS, _emit, _local

#: as `callbacks list`: the table masks numbers unless asked; json and csv carry them in full
FORMAT_HELP = "json and csv carry full E.164 numbers and UTC times; the table masks numbers."
SHOW_HELP = "Show full numbers in the table."


def _clock() -> Any:
    from callback_queue.clock import SystemClock

    return SystemClock()


def _normalize(obj: Ctx) -> Any:
    from .app import normalizer

    norm = normalizer(obj.settings)

    def e164(raw: str) -> str | None:
        n = norm.normalize(raw) if hasattr(norm, "normalize") else norm(raw)
        return getattr(n, "e164", n) if n else None

    return e164


# -- sms ----------------------------------------------------------------------------------------
@cli.group()
def sms() -> None:
    """The SMS fallback: preview the texts, list what was sent, run the outbox once."""


@sms.command("preview")
@click.option("--kind", type=click.Choice(["recall", "followup", "all"]), default="all", show_default=True)
@click.option("--lang", type=click.Choice(["zh-CN", "en", "all"]), default="all", show_default=True)
@click.option("--request-id", default="XN-2026-000123", show_default=True, help="Sample request id (follow-ups).")
@with_config
def sms_preview(obj: Ctx, kind: str, lang: str, request_id: str) -> None:
    """Render the configured templates with a sample link; show encoding and segment count."""
    from sms.errors import TemplateError
    from sms.service import link_base
    from sms.templates import KINDS, LANGUAGES, composer_from
    from sms.tokens import link_url, new_token

    try:
        composer = composer_from(obj.settings)
    except TemplateError as exc:
        raise click.ClickException(str(exc)) from None
    link = link_url(link_base(obj.settings), new_token())
    bad = False
    for k in KINDS if kind == "all" else (kind,):
        for lg in LANGUAGES if lang == "all" else (lang,):
            try:
                r = composer.render(k, lg, link=link, request_id=request_id)
            except TemplateError as exc:
                click.echo(f"== {k}.{lg}: TOO LONG: {exc}\n")
                bad = True
                continue
            click.echo(f"== {k}.{lg}: {r.info.describe()} (max {composer.max_segments})")
            click.echo(r.body + "\n")
    if bad:
        sys.exit(1)


@sms.command("list")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True, help=FORMAT_HELP)
@click.option("--show-numbers", is_flag=True, help=SHOW_HELP)
@with_config
def sms_list(obj: Ctx, limit: int, fmt: str, show_numbers: bool) -> None:
    """The newest SMS intents and what became of them."""
    import sqlalchemy as sa

    from callback_queue import schema as t
    from callback_queue.numbers import mask

    m = t.sms_messages
    with _store(obj).read() as conn:
        rows = conn.execute(sa.select(m).order_by(m.c.id.desc()).limit(limit)).all()
    tz = obj.settings.tz
    full = fmt != "table" or show_numbers
    out = [{"id": r.id, "callback_id": r.callback_id, "number": r.number if full else mask(r.number),
            "sender": r.sender, "lang": r.lang, "state": r.state, "provider_status": r.provider_status,
            "provider_id": r.provider_id, "tries": r.tries, "error": r.error,
            "created_at": _local(r.created_at, tz) if fmt == "table" else r.created_at.isoformat()} for r in rows]
    _emit(out, fmt, ("id", "callback_id", "number", "sender", "state", "provider_status", "tries", "error",
                     "created_at"), title="SMS")


@sms.command("send-now")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="json: the tick's counts and errors as one JSON object, for scripts.")
@with_config
def sms_send_now(obj: Ctx, fmt: str) -> None:
    """Run the outbox once (what the daemon does every [sms] poll_interval).

    Prints what the run did, e.g. `SMS outbox: 2 queued, 2 sent`; errors (a send whose outcome is
    unknown, a provider that could not be asked) follow on stderr, one a line. Inside [sms] quiet_hours
    nothing is sent: what is due is held, queued, until they end.
    """
    from sms.service import build_outbox

    _setup_logs(obj, quiet=True)
    stats = build_outbox(obj.settings, _store(obj), _clock()).tick()
    if fmt == "json":
        click.echo(json.dumps(dict(stats.__dict__), ensure_ascii=False))
        return
    click.echo(f"SMS outbox: {_tick_summary(stats)}")
    for error in stats.errors:
        click.echo(f"  error: {error}", err=True)


#: what `sms send-now` counts, in the order a message goes through the outbox
_TICK_COUNTS = (("queued", "queued"), ("sent", "sent"), ("retried", "to be retried"), ("failed", "failed"),
                ("skipped", "skipped (do-not-contact or no route)"), ("reconciled", "found sent when reconciled"),
                ("settled", "callbacks settled by an earlier SMS"),
                ("held", "held until the quiet hours end ([sms] quiet_hours)"))


def _tick_summary(stats: Any) -> str:
    """`2 queued, 2 sent` (only what happened), or `nothing to do`; `1 error` at the end if any."""
    parts = [f"{getattr(stats, k)} {label}" for k, label in _TICK_COUNTS if getattr(stats, k)]
    if stats.errors:
        parts.append(f"{len(stats.errors)} {'error' if len(stats.errors) == 1 else 'errors'}")
    return ", ".join(parts) or "nothing to do"


# -- followups --------------------------------------------------------------------------------
@cli.group()
def followups() -> None:
    """Follow-ups: rate a closed request by phone (SMS link if the citizen cannot be reached)."""


@followups.command("add")
@click.option("--number", required=True, help="The citizen's number (local or E.164).")
@click.option("--request-id", required=True, help="The closed request to be rated.")
@click.option("--priority", type=int, default=0, show_default=True)
@with_config
def followups_add(obj: Ctx, number: str, request_id: str, priority: int) -> None:
    """Queue one follow-up."""
    from sms.followups import Followups

    c = Followups(_store(obj), _clock(), _normalize(obj)).add(number, request_id, priority=priority,
                                                               actor=default_operator())
    click.echo(f"follow-up {c.id} for request {c.request_id}: {c.state.value}")


@followups.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@with_config
def followups_import(obj: Ctx, file: str) -> None:
    """Import follow-ups from CSV (header: number,request_id[,due_at,priority]); repeating is safe."""
    from sms.followups import Followups

    # a large file is one long transaction: no statement timeout (see open_bulk_store)
    rep = Followups(_store(obj, bulk=True), _clock(), _normalize(obj)).import_csv(Path(file))
    click.echo(f"{file}: {len(rep.created)} created, {rep.duplicates} already there, {len(rep.refused)} refused")
    for line, why in rep.refused:
        click.echo(f"  line {line}: {why}", err=True)
    if rep.refused:
        sys.exit(1)


@followups.command("list")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True, help=FORMAT_HELP)
@click.option("--show-numbers", is_flag=True, help=SHOW_HELP)
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@with_config
def followups_list(obj: Ctx, fmt: str, show_numbers: bool, limit: int) -> None:
    """Follow-ups, newest first."""
    import sqlalchemy as sa

    from callback_queue import schema as t
    from callback_queue.callbacks import Callback
    from callback_queue.numbers import mask

    cb = t.callbacks
    with _store(obj).read() as conn:
        items = [Callback.from_row(r) for r in conn.execute(
            sa.select(cb).where(cb.c.kind == "followup").order_by(cb.c.id.desc()).limit(limit))]
    full = fmt != "table" or show_numbers
    rows = [{"id": c.id, "request_id": c.request_id, "number": c.number if full else mask(c.number),
             "state": c.state.value, "dial_attempts": c.dial_attempts,
             "due_at": _local(c.due_at, obj.settings.tz) if fmt == "table" else c.due_at.isoformat()} for c in items]
    _emit(rows, fmt, ("id", "request_id", "number", "state", "dial_attempts", "due_at"), title="follow-ups")


# -- do-not-contact ---------------------------------------------------------------------------
@cli.group()
def dnc() -> None:
    """The do-not-contact list: no SMS and no callback for these numbers."""


@dnc.command("add")
@click.argument("number")
@click.option("--reason", default=None, help="Why (kept with the entry).")
@click.option("--operator", default=None,
              help="Who lists it, as the cancelled callbacks' history shows (default: $CALLBACKD_OPERATOR or "
                   "the login name).")
@with_config
def dnc_add(obj: Ctx, number: str, reason: str | None, operator: str | None) -> None:
    """List a number (its open callbacks are cancelled). Exit 0 if it was already listed."""
    from callback_queue.numbers import mask
    from sms.contacts import DoNotContact

    e164 = _normalize(obj)(number)
    if not e164:
        raise click.BadParameter(f"{number!r} is not a phone number", param_hint="NUMBER")
    added, cancelled = DoNotContact(_store(obj), _clock()).add(e164, "operator", reason,
                                                               actor=operator or default_operator())
    head = f"added {mask(e164)}" if added else f"{mask(e164)} is already on the list"
    click.echo(f"{head}; {_cancelled(cancelled)}")


def _cancelled(ids: list[int]) -> str:
    """`cancelled callback 3`, `cancelled callbacks 3, 7` or `no open callback`."""
    if not ids:
        return "no open callback"
    return f"cancelled callback{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))}"


@dnc.command("remove")
@click.argument("number")
@with_config
def dnc_remove(obj: Ctx, number: str) -> None:
    """Take a number off the list. Exit 0 if it was not on it."""
    from callback_queue.numbers import mask
    from sms.contacts import DoNotContact

    e164 = _normalize(obj)(number)
    removed = DoNotContact(_store(obj), _clock()).remove(e164 or number)
    shown = mask(e164) if e164 else repr(number)     # not a number: as typed, in case it was listed so
    click.echo(f"removed {shown}" if removed else f"{shown} is not on the list")


@dnc.command("list")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True, help=FORMAT_HELP)
@click.option("--show-numbers", is_flag=True, help=SHOW_HELP)
@with_config
def dnc_list(obj: Ctx, fmt: str, show_numbers: bool) -> None:
    """All listed numbers."""
    from callback_queue.numbers import mask
    from sms.contacts import DoNotContact

    table = fmt == "table"
    rows = [{"number": mask(e.number) if table and not show_numbers else e.number, "source": e.source,
             "reason": e.reason,
             "created_at": _local(e.created_at, obj.settings.tz) if table
             else e.created_at.isoformat().replace("+00:00", "Z")}
            for e in DoNotContact(_store(obj), _clock()).list()]
    _emit(rows, fmt, ("number", "source", "reason", "created_at"), title="do-not-contact")
