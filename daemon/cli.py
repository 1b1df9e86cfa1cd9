"""The `callbackd` command line: a thin layer over the services the daemon uses.

Heavy libraries are imported inside the commands, so `callbackd --help` stays fast.
"""

from __future__ import annotations

import functools
import getpass
import os
import sys
from pathlib import Path
from typing import Any

import click

EX_CONFIG = 78  # sysexits.h: configuration error (systemd: RestartPreventExitStatus=78)


class Ctx:
    def __init__(self) -> None:
        self.config_path: str | None = None
        self._settings: Any = None

    @property
    def settings(self) -> Any:
        if self._settings is None:
            from .settings import load_settings

            self._settings = load_settings(self.config_path)
        return self._settings


def with_config(fn: Any) -> Any:
    """Every command takes --config PATH (CALLBACKD_CONFIG names the file too)."""

    @click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                  help="Configuration file (default: $CALLBACKD_CONFIG, /etc/callbackd/callbackd.toml, "
                       "./config/callbackd.toml).")
    @click.pass_obj
    @functools.wraps(fn)
    def wrapper(obj: Ctx, config_path: str | None, *args: Any, **kwargs: Any) -> Any:
        if config_path:
            obj.config_path = config_path
            obj._settings = None
        return _guard(fn, obj, *args, **kwargs)

    return wrapper


def _guard(fn: Any, obj: Ctx, *args: Any, **kwargs: Any) -> Any:
    from callback_queue.errors import CallbackdError, ConfigError

    try:
        return fn(obj, *args, **kwargs)
    except ConfigError as exc:
        click.echo(f"callbackd: {exc}", err=True)
        sys.exit(EX_CONFIG)
    except CallbackdError as exc:
        click.echo(f"callbackd: {exc}", err=True)
        sys.exit(1)


def _setup_logs(obj: Ctx, quiet: bool = False) -> None:
    from .logs import configure

    s = obj.settings
    configure("warning" if quiet else s.daemon.log_level, s.daemon.log_format)


def _store(obj: Ctx, require_current: bool = True, *, bulk: bool = False) -> Any:
    from .app import open_bulk_store, open_store

    store = (open_bulk_store if bulk else open_store)(obj.settings)
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(store.dispose)
    if require_current:
        store.require_current()
    return store


def _queue(obj: Ctx) -> Any:
    from callback_queue.clock import SystemClock

    from .app import callback_queue

    return callback_queue(obj.settings, _store(obj), SystemClock())


def default_operator() -> str:
    return os.environ.get("CALLBACKD_OPERATOR") or getpass.getuser()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Configuration file (also $CALLBACKD_CONFIG).")
@click.version_option(package_name="callbackd", prog_name="callbackd")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """callbackd: calls back citizens who tried the hotline several times without getting through."""
    ctx.obj = ctx.obj or Ctx()
    ctx.obj.config_path = config_path


# -- run ----------------------------------------------------------------------------------
@cli.command()
@with_config
def run(obj: Ctx) -> None:
    """Run the daemon: tail the configured call logs, open and cancel callbacks, sweep leases."""
    _setup_logs(obj)
    from .app import Daemon

    sys.exit(Daemon(obj.settings).run())


# -- db -------------------------------------------------------------------------------------
@cli.group()
def db() -> None:
    """Database schema: upgrade, current revision."""


@db.command("upgrade")
@click.option("--revision", default="heads", show_default=True, help="Target revision.")
@with_config
def db_upgrade(obj: Ctx, revision: str) -> None:
    """Create or migrate the schema (Alembic migrations)."""
    from callback_queue.store import redact_url

    store = _store(obj, require_current=False, bulk=True)  # no statement timeout: see open_bulk_store
    before, after = store.upgrade(revision)
    if before == after:
        click.echo(f"{redact_url(store.url)}: already at {after}")
    else:
        click.echo(f"{redact_url(store.url)}: {before or '(empty)'} -> {after}")


@db.command("current")
@with_config
def db_current(obj: Ctx) -> None:
    """Show the schema revision and whether it is current (exit 1 if not)."""
    store = _store(obj, require_current=False)
    cur, head = store.current_revision(), store.head_revision()
    click.echo(f"current: {cur or '(empty)'}\nhead:    {head}")
    if cur != head:
        click.echo("run `callbackd db upgrade`", err=True)
        sys.exit(1)


# -- config ---------------------------------------------------------------------------------
@cli.group("config")
def config_group() -> None:
    """Configuration: check it and print the effective values."""


@config_group.command("check")
@click.option("--format", "fmt", type=click.Choice(["toml", "json"]), default="toml", show_default=True)
@with_config
def config_check(obj: Ctx, fmt: str) -> None:
    """Validate the configuration and print it with secrets redacted (exit 78 if invalid)."""
    import json

    from .ami.source import check_reload as check_ami

    s = obj.settings
    check_ami(s)  # what the daemon refuses at start and on reload (repeated PBX names, [dialer.ami])
    data = s.redacted()
    if fmt == "json":
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        click.echo(f"# effective configuration from {s.origin}")
        click.echo(_toml(data))


def _toml(data: dict[str, Any], prefix: str = "") -> str:
    """The effective settings as TOML that loads back (tomllib): tables as [a.b], lists of tables as
    [[a.b]], keys that are not bare quoted; a value not set is a comment (TOML has no null)."""
    flat, tables, arrays = [], [], []
    for k, v in data.items():
        key = _toml_key(k)
        if isinstance(v, dict):
            tables.append((key, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            arrays.append((key, v))
        elif v is None:
            flat.append(f"# {key} = (not set)")
        else:
            flat.append(f"{key} = {_toml_value(v)}")
    out = "\n".join(flat)
    for k, v in tables:
        name = f"{prefix}{k}"
        if all(isinstance(x, dict) or x is None for x in v.values()) and v:
            body = _toml(v, name + ".")
            out += ("\n" if out else "") + body
        else:
            out += f"\n\n[{name}]\n" + _toml(v, name + ".")
    for k, items in arrays:
        name = f"{prefix}{k}"
        for item in items:
            out += f"\n\n[[{name}]]\n" + _toml(item, name + ".")
    return out.strip("\n")


def _toml_key(key: str) -> str:
    import json
    import re

    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def _toml_value(v: Any) -> str:
    """One inline TOML value (JSON strings, numbers and booleans are TOML too); None is left out of
    inline tables and arrays."""
    import json

    if isinstance(v, dict):
        inner = ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items() if x is not None)
        return f"{{ {inner} }}" if inner else "{}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v if x is not None) + "]"
    return json.dumps(v, ensure_ascii=False)


# -- import ---------------------------------------------------------------------------------
@cli.group("import")
def import_group() -> None:
    """Backfill attempts from call-log files (safe to repeat)."""


def _run_import(obj: Ctx, kind: str, files: tuple[str, ...], system: str | None) -> None:
    from callback_queue.clock import SystemClock
    from callback_queue.ingest import Ingestor

    from .app import cdr_parser, detect_rules, normalizer, queue_log_parser
    from .settings import CdrSource, QueueLogSource
    from .sources.pipeline import import_file

    _setup_logs(obj, quiet=True)
    s = obj.settings
    src_cls = QueueLogSource if kind == "queue_log" else CdrSource
    current = getattr(s.sources, kind)
    src = current or src_cls(path=Path(files[0]))
    if system:
        src = src.model_copy(update={"system": system})
    s = s.model_copy(update={"sources": s.sources.model_copy(update={kind: src})})
    norm = normalizer(s)
    parser = queue_log_parser(s, norm) if kind == "queue_log" else cdr_parser(s, norm)
    store = _store(obj, bulk=True)  # no statement timeout: see open_bulk_store
    ingestor = Ingestor(store, SystemClock(), detect_rules(s))
    total = dict.fromkeys(_IMPORT_COUNTS, 0)
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise click.ClickException(f"{name}: no such file")
        stats = _import_one(path, parser, ingestor, import_file)
        for k, v in _import_counts(stats).items():
            total[k] += v
        click.echo(f"{name}: {_import_summary(_import_counts(stats))}")
        if stats.attempts == 0 and stats.lines:
            hint = (_cdr_hint(path, s, norm) if kind == "cdr" else _queue_log_hint(path)) \
                if stats.lines > stats.dead_letters or kind == "queue_log" else None
            if hint:
                click.echo(f"{name}: {hint}", err=True)
    if len(files) > 1:
        click.echo(f"total: {_import_summary(total)}")


def _cdr_hint(path: Path, s: Any, norm: Any) -> str | None:
    """Why a CDR file gave no attempt: its records' dcontext is not one the settings call inbound."""
    import itertools

    from .app import cdr_parser

    parser = cdr_parser(s, norm)   # a fresh one: the import's parsed in another process
    with path.open("rb") as f:
        for i, line in enumerate(itertools.islice(f, 20_000)):
            parser.feed(line, str(i))
    if not parser.not_inbound:
        return None
    seen = ", ".join(f"{ctx or '(empty)'} ({n:,})" for ctx, n in parser.not_inbound.most_common(5))
    src = s.sources.cdr
    return (f"no record is an inbound hotline call: their dcontext is {seen}; [sources.cdr] inbound_contexts is "
            f"{list(src.inbound_contexts)}" + (f" and hotline_numbers {list(src.hotline_numbers)}"
                                                if src.hotline_numbers else "")
            + " - add the hotline's context there (or its DIDs to hotline_numbers) and import again")


def _queue_log_hint(path: Path) -> str | None:
    """Why a queue_log file gave no attempt, when every line was refused: often a CDR file."""
    with path.open("rb") as f:
        first = next((ln for ln in f if ln.strip()), b"")
    if b"|" not in first and first.count(b",") >= 8:
        return "this looks like a CDR CSV file, not a queue_log: `callbackd import cdr FILE`"
    return "no line is a queue_log event: `callbackd deadletters list` shows why each was refused"


_IMPORT_COUNTS = ("lines", "attempts", "dead_letters", "opened", "cancelled")


def _import_counts(stats: Any) -> dict[str, int]:
    return {k: getattr(stats, k) for k in _IMPORT_COUNTS}


def _import_summary(n: dict[str, int]) -> str:
    """One import's counts, e.g. `1,093,085 lines, 401,840 attempts, 0 dead letters, 1 callback opened, 0 cancelled`."""
    def count(k: str, one: str, many: str) -> str:
        return f"{n[k]:,} {one if n[k] == 1 else many}"
    return ", ".join((count("lines", "line", "lines"), count("attempts", "attempt", "attempts"),
                      count("dead_letters", "dead letter", "dead letters"),
                      count("opened", "callback opened", "callbacks opened"), f"{n['cancelled']:,} cancelled"))


def _import_one(path: Path, parser: Any, ingestor: Any, import_file: Any) -> Any:
    if not sys.stderr.isatty():
        return import_file(path, parser, ingestor)
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    # no refresh thread (auto_refresh=False): the import forks a parse worker only from a single-threaded process
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), transient=True, auto_refresh=False) as bar:
        task = bar.add_task(path.name, total=path.stat().st_size)

        def advance(n: int) -> None:
            bar.advance(task, n)
            bar.refresh()

        return import_file(path, parser, ingestor, progress=advance)


@import_group.command("queue-log")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--system", help="PBX name the call ids belong to (default: [sources.queue_log] system or 'pbx').")
@with_config
def import_queue_log(obj: Ctx, files: tuple[str, ...], system: str | None) -> None:
    """Import Asterisk queue_log files (plain or gzip)."""
    _run_import(obj, "queue_log", files, system)


@import_group.command("cdr")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--system", help="PBX name the call ids belong to (default: [sources.cdr] system or 'pbx').")
@with_config
def import_cdr(obj: Ctx, files: tuple[str, ...], system: str | None) -> None:
    """Import Asterisk CDR CSV files (cdr_csv or cdr_custom, plain or gzip)."""
    _run_import(obj, "cdr", files, system)


# the command groups of each feature register themselves on `cli` when imported
from . import cli_admin, cli_callbacks, cli_schedule, cli_sms  # noqa: E402,F401,I001


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="callbackd", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0

