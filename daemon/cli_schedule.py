"""Admins' commands: what the schedule will do (`schedule preview`, `schedule learn`), `reload`."""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import click

from .cli import Ctx, _store, cli, with_config


@cli.group()
def schedule() -> None:
    """Off-peak windows: preview the plan, see learned windows."""


def _rules_and_planner(obj: Ctx) -> tuple[Any, Any, Any]:
    from callback_queue.clock import SystemClock

    from .app import planner

    s = obj.settings
    if s.schedule is None:
        raise click.ClickException("no [schedule] in the configuration: callbacks are due as soon as they open")
    store = _store(obj)
    p = planner(s, store, SystemClock())
    return store, p.rules, p


@schedule.command("preview")
@click.option("--from", "start", type=click.DateTime(formats=["%Y-%m-%d"]), default=None,
              help="First day to show (local date, e.g. 2027-02-01). Default: today.")
@click.option("--days", type=click.IntRange(1, 400), default=7, show_default=True, help="Days to show.")
@click.option("--weeks", type=click.IntRange(1, 52), default=4, show_default=True,
              help="Weeks of inbound traffic for the heatmap.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@with_config
def preview(obj: Ctx, start: Any, days: int, weeks: int, fmt: str) -> None:
    """Every day: its type (holiday name, 调休 for a worked weekend day), the windows, their capacity and the
    callbacks planned into each, or why it has none (closure, holiday, quiet hours); SLA breaches ahead;
    years whose official holiday schedule the holidays package lacks; and a weekday × hour heatmap of
    inbound volume with the windows marked."""
    from callback_queue.clock import SystemClock
    from callback_queue.windows import DAYS

    from .schedule_preview import build

    if obj.settings.schedule is None:
        raise click.ClickException("no [schedule] in the configuration: callbacks are due as soon as they open")
    data = build(obj.settings, _store(obj), SystemClock().now(), days=days, weeks=weeks,
                 start=start.date() if start is not None else None)
    if fmt == "json":
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    from datetime import datetime

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    con = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 120)
    for w in data["warnings"]:
        con.print(f"[yellow]! {escape(w)}[/]")
    t = Table(title=f"plan from {data['from']} to {data['to']} ({days} days, times in {data['timezone']})")
    for c in ("day", "type", "window", "capacity", "planned", "free", "note"):
        t.add_column(c)
    for d in data["days"]:
        day = f"{d['date']} {d['weekday']}"
        kind = d["type"] + (" 调休" if d["swapped_workday"] else "")
        name = d["holiday"] or ""
        if not d["windows"]:
            why = d["no_windows"]
            note = why if why.startswith("no ") else f"no windows: {why}"
            t.add_row(day, kind, "-", "", "", "", escape(f"{name}; {note}" if name and name not in note else note))
        for i, w in enumerate(d["windows"]):
            t.add_row(day if i == 0 else "", kind if i == 0 else "", w["window"], str(w["capacity"]),
                      str(w["planned"]), str(w["capacity"] - w["planned"]),
                      escape(" ".join(x for x in (name if i == 0 else "", "(past)" if w["past"] else "") if x)))
    con.print(t)
    breaches = data["sla_breaches"]
    con.print(f"open callbacks: {data['open_callbacks']}; unplaced in the horizon: {data['unplaced']}; "
              f"[{'red' if breaches else 'green'}]SLA breaches ahead: {len(breaches)}[/]")
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(data["timezone"])
    for b in breaches[:20]:
        when = datetime.fromisoformat(b["planned"]).astimezone(tz).strftime("%Y-%m-%d %H:%M") if b["planned"] \
            else "no window"
        con.print(f"  callback {b['callback_id']}: planned {when}")
    hm = data["heatmap"]
    con.print(_heatmap(hm["volume_per_hour"], hm["windows"], weeks, DAYS))


def _heatmap(volume: dict[str, list[float]], marked: dict[str, list[int]], weeks: int, days: Any) -> Any:
    from rich.text import Text

    top = max((v for row in volume.values() for v in row), default=0) or 1
    shades = " ░▒▓█"
    text = Text(f"\ninbound calls per hour, average of the last {weeks} weeks ([ ] = callback window)\n")
    text.append("      " + "".join(f"{h:<3d}" for h in range(24)) + "\n")
    for d in days:
        text.append(f"{d:<5} ")
        for h in range(24):
            v = volume[d][h]
            shade = shades[min(4, int(v / top * 4.999))] * 2
            style = f"on rgb({int(40 + 215 * v / top)},{int(80 - 60 * v / top)},60)"
            cell = f"[{shade[0]}]" if h in marked[d] else f" {shade}"
            text.append(cell[:3], style=style)
        text.append(f"  max {max(volume[d]):.0f}/h\n")
    return text


@schedule.command("learn")
@click.option("--weeks", type=click.IntRange(1, 52), default=None, help="Default: [schedule.learned] weeks.")
@with_config
def learn(obj: Ctx, weeks: int | None) -> None:
    """Show the windows learned from traffic and why (whether or not [schedule.learned] is enabled)."""
    from callback_queue.clock import SystemClock
    from callback_queue.learning import learn_windows
    from callback_queue.windows import TimeRange

    store, rules, _ = _rules_and_planner(obj)
    sc = obj.settings.schedule
    result = learn_windows(store, SystemClock(), rules, weeks=weeks or sc.learned.weeks,
                           allowed=tuple(TimeRange.parse(x) for x in sc.learned.allowed),
                           min_hours=sc.learned.min_hours)
    for line in result.explanation:
        click.echo(line)


@cli.command()
@with_config
def reload(obj: Ctx) -> None:
    """Ask the running daemon to re-read its configuration (same as SIGHUP)."""
    pid_file = obj.settings.daemon.state_dir / "callbackd.pid"
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except FileNotFoundError:
        raise click.ClickException(f"no {pid_file}: is the daemon running with this configuration?") from None
    except (ValueError, ProcessLookupError):
        raise click.ClickException(f"{pid_file} names no running daemon") from None
    click.echo(f"sent SIGHUP to {pid}")


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Configuration file (also $CALLBACKD_CONFIG).")
@click.pass_obj
def doctor(obj: Ctx, config_path: str | None) -> None:
    """Check the installation: config, database and schema, clock, log files, PBX and Twilio logins.
    Each problem says what to do; the exit status is 1 if anything failed."""
    from callback_queue.errors import ConfigError

    from .app import load_features
    from .doctor import Result, run
    from .settings import load_settings

    try:
        settings = load_settings(config_path or obj.config_path)
    except ConfigError as exc:
        click.echo(f"✗ config: {exc}\n  fix the setting named above, then run `callbackd config check`")
        sys.exit(1)
    load_features()  # features add their own checks (AMI logins, ...)
    results: list[Result] = [Result("config", True, f"{settings.origin} is valid")] + run(settings)
    failed = 0
    for r in results:
        mark = "✓" if r.ok and not r.warning else ("!" if r.ok else "✗")
        click.echo(f"{mark} {r.name}: {r.detail}")
        if not r.ok:
            failed += 1
            if r.fix:
                click.echo(f"  → {r.fix}")
    click.echo(f"{failed} problem{'s' if failed != 1 else ''} found" if failed else "all good")
    sys.exit(1 if failed else 0)
