"""Admins' commands: console/API users (`users add|list|disable|enable|token`) and `report`."""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any

import click

from .cli import Ctx, _store, cli, with_config
from .cli_callbacks import _emit, _local


def _users(obj: Ctx) -> Any:
    from callback_queue.clock import SystemClock
    from callback_queue.users import Users

    return Users(_store(obj), SystemClock())


@cli.group()
def users() -> None:
    """Console and API users: operators and admins, each with a bearer token."""


@users.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(["operator", "admin"]), required=True,
              help="operator: work the queue; admin: also reports, heatmap, follow-ups, config.")
@with_config
def users_add(obj: Ctx, name: str, role: str) -> None:
    """Create a user and print their token (shown once; only its hash is stored)."""
    try:
        user, token = _users(obj).add(name, role)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    click.echo(f"user {user.name} ({user.role.value}) created; their token (shown only now):", err=True)
    click.echo(token)


@users.command("token")
@click.argument("name")
@with_config
def users_token(obj: Ctx, name: str) -> None:
    """Issue another token for a user (printed once; refused while the user is disabled)."""
    click.echo(_users(obj).new_token(name))


@users.command("list")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@with_config
def users_list(obj: Ctx, fmt: str) -> None:
    """The users, their roles and whether they are disabled.

    The table shows local times ([daemon] timezone); json and csv UTC.
    """
    items = _users(obj).list()
    if fmt == "table":
        tz = obj.settings.tz
        rows = [{"name": u.name, "role": u.role.value, "created_at": _local(u.created_at, tz),
                 "disabled_at": _local(u.disabled_at, tz)} for u in items]
        title = f"users (times in {obj.settings.daemon.timezone})"
    else:
        rows = [{"name": u.name, "role": u.role.value, "created_at": u.created_at.isoformat(),
                 "disabled_at": u.disabled_at.isoformat() if u.disabled_at else None} for u in items]
        title = "users"
    _emit(rows, fmt, ("name", "role", "created_at", "disabled_at"), title=title)


@users.command("disable")
@click.argument("name")
@with_config
def users_disable(obj: Ctx, name: str) -> None:
    """Disable a user: their tokens are revoked and their console sessions end."""
    u = _users(obj).disable(name)
    click.echo(f"user {u.name} disabled")


@users.command("enable")
@click.argument("name")
@with_config
def users_enable(obj: Ctx, name: str) -> None:
    """Enable a disabled user again. Their old tokens stay revoked: issue one with `users token NAME`."""
    us = _users(obj)
    if us.get(name).disabled_at is None:
        click.echo(f"user {name} is not disabled")
        return
    u = us.enable(name)
    click.echo(f"user {u.name} enabled; their old tokens stay revoked: `callbackd users token {u.name}` "
               "issues a new one")


def _day(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)") from None


@cli.command()
@click.option("--since", default=None, help="First local day, YYYY-MM-DD (default: 30 days ago).")
@click.option("--until", default=None, help="Last local day, inclusive (default: today).")
@click.option("--by", type=click.Choice(["day", "week"]), default="day", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@with_config
def report(obj: Ctx, since: str | None, until: str | None, by: str, fmt: str) -> None:
    """Callers flagged, called back within SLA, reached, SMS sent and delivered, rated, satisfied, resolved.

    Each period counts the callbacks triggered in it and what became of them since (the same
    figures as the console's reports page and GET /api/reports).
    """
    from callback_queue import reports

    s = obj.settings
    today = datetime.now(s.tz).date()
    lo, hi = reports.default_range(today)
    first, last = _day(since), _day(until)
    last = last or hi
    first = first or (last - (hi - lo))
    if last < first:
        # (only a given --since can be later: the default is 30 days before --until)
        raise click.UsageError(f"--since {first} is after --until {last}{'' if until else ' (default: today)'}: "
                               "the first day comes first")
    rep = reports.build(_store(obj), s.tz, first, last, by=by, sla=s.console.report_sla)
    if fmt == "json":
        click.echo(json.dumps(rep.as_json(), ensure_ascii=False, indent=2))
    elif fmt == "csv":
        click.echo(rep.csv(), nl=False)
    else:
        rows = [r.as_json() for r in [*rep.rows, rep.total]]
        cols = ("period", *reports.FIELDS)
        _emit(rows, "table", cols, title=f"callbacks triggered {rep.since} to {rep.until}, by {by} ({rep.timezone})")
        rates = rep.rates()
        click.echo("rates: " + ", ".join(f"{k} {v:.1%}" if v is not None else f"{k} -" for k, v in rates.items()))
