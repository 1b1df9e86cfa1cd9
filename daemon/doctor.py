"""`callbackd doctor`: is this installation able to do its job? Each failure says what to do.

Features add their own checks to CHECKS (a function taking the settings and yielding Results).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False  # worth knowing, not a failure


Check = Callable[[Any], Iterable[Result]]
CHECKS: list[Check] = []


def check(fn: Check) -> Check:
    CHECKS.append(fn)
    return fn


@check
def database(s: Any) -> Iterator[Result]:
    from callback_queue.errors import CallbackdError
    from callback_queue.store import redact_url

    from .app import open_check_store

    url = redact_url(s.store_url)
    try:
        store = open_check_store(s)
        try:
            current, heads = store.current_heads(), store.script_heads()
            if current != heads:
                needs = ", ".join(sorted(heads))
                at = f"schema at {', '.join(sorted(current))}" if current else "schema empty"
                yield Result("database", False, f"{url}: {at} (needs {needs})", "run `callbackd db upgrade`")
                return
            yield Result("database", True, f"{url}, schema current ({', '.join(sorted(heads))})")
            yield from _clock(store)
        finally:
            store.dispose()
    except (CallbackdError, Exception) as exc:  # noqa: BLE001 - report any failure to connect
        yield Result(
            "database",
            False,
            f"{url}: {exc}",
            "check [store] url (or CALLBACKD_STORE__URL) and that the server is running",
        )


def _clock(store: Any) -> Iterator[Result]:
    if store.is_sqlite:
        return
    with store.read() as conn:
        server = conn.exec_driver_sql("SELECT now()").scalar()
    skew = abs((datetime.now(UTC) - server).total_seconds())
    if skew > 5:
        yield Result(
            "clock",
            False,
            f"this host and the database differ by {skew:.1f} s",
            "synchronize both clocks (chrony/systemd-timesyncd): leases and windows depend on them",
        )
    else:
        yield Result("clock", True, f"agrees with the database within {skew:.2f} s")


@check
def time_zone(s: Any) -> Iterator[Result]:
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(s.daemon.timezone)
    now = datetime.now(UTC)
    if now.year < 2024:
        yield Result("clock", False, f"the system clock says {now:%Y-%m-%d}", "set the system clock")
        return
    yield Result("time zone", True, f"{s.daemon.timezone}: local time {now.astimezone(tz):%Y-%m-%d %H:%M %Z}")


#: how far ahead `doctor` looks for a year whose official holiday schedule is missing (beyond the horizon:
#: the State Council publishes the next year's in November or December, time to add its worked weekends)
CALENDAR_LOOKAHEAD_DAYS = 60


@check
def calendar(s: Any) -> Iterator[Result]:
    from zoneinfo import ZoneInfo

    yield from calendar_results(s.schedule, datetime.now(UTC).astimezone(ZoneInfo(s.daemon.timezone)).date())


def calendar_results(sc: Any, today: date) -> Iterator[Result]:
    """[schedule]'s holiday calendar: known, and known far enough ahead (the official schedule of each year the
    horizon, or the next CALENDAR_LOOKAHEAD_DAYS, reaches)."""
    from callback_queue.holiday_calendar import UnknownCalendar, provisional_warning, provisional_years

    if sc is None or not sc.country:
        return
    where = sc.country + (f"-{sc.subdivision}" if sc.subdivision else "")
    last = today + max(sc.horizon, timedelta(days=CALENDAR_LOOKAHEAD_DAYS))
    try:
        years = provisional_years(sc.country, sc.subdivision, today, last)
    except UnknownCalendar as exc:
        yield Result("calendar", False, f"{where}: {exc}", "fix [schedule] country / subdivision")
        return
    for y in years:
        yield Result("calendar", True, provisional_warning(y, sc.country), warning=True)
    if not years:
        yield Result("calendar", True, f"{where}: holidays and worked weekends known to {last:%Y-%m-%d}")


@check
def state_dir(s: Any) -> Iterator[Result]:
    d = s.daemon.state_dir
    if s.store.url and not str(s.store.url).startswith("sqlite"):
        probe = d if d.exists() else None
        if probe is None:
            yield Result("state dir", True, f"{d} (not needed: the store is not SQLite)", warning=True)
            return
    if not d.exists():
        parent = d.parent
        ok = os.access(parent, os.W_OK)
        yield Result(
            "state dir",
            ok,
            f"{d} does not exist" + ("; it will be created" if ok else ""),
            "" if ok else f"create {d} writable by the service user (systemd: StateDirectory=)",
        )
        return
    ok = os.access(d, os.W_OK)
    yield Result(
        "state dir", ok, f"{d} {'is' if ok else 'is not'} writable", "" if ok else f"chown the service user {d}"
    )


#: free space below either of these on the state dir's or the SQLite file's filesystem is worth a warning;
#: below DISK_FAIL_BYTES writes are about to fail ("database or disk is full"): a failure
DISK_WARN_BYTES = 100 * 1024 * 1024
DISK_WARN_FRACTION = 0.05
DISK_FAIL_BYTES = 16 * 1024 * 1024
_statvfs = os.statvfs


@check
def disk_space(s: Any) -> Iterator[Result]:
    """Free space where the daemon writes: the state dir and, on SQLite, the database file's folder (each
    filesystem once)."""
    from sqlalchemy.engine import make_url

    paths = [s.daemon.state_dir]
    url = make_url(s.store_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        paths.append(Path(url.database).parent)
    seen: set[int] = set()
    for path in paths:
        probe = Path(path)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent  # not created yet: the filesystem it will be on
        try:
            dev = probe.stat().st_dev
            if dev in seen:
                continue
            seen.add(dev)
            st = _statvfs(probe)
        except OSError as exc:
            yield Result("disk space", False, f"{path}: {exc}", "check the folder and its filesystem")
            continue
        free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
        detail = f"{path}: {_mib(free)} free of {_mib(total)}"
        fix = f"free space on {path}'s filesystem (or move it to a bigger one)"
        if free < DISK_FAIL_BYTES:
            yield Result("disk space", False, f"{detail}: writes will fail (database or disk is full)", fix)
        elif free < DISK_WARN_BYTES or (total and free < DISK_WARN_FRACTION * total):
            yield Result("disk space", True, f"{detail}: below {_mib(DISK_WARN_BYTES)} or "
                         f"{DISK_WARN_FRACTION:.0%}", fix, warning=True)
        else:
            yield Result("disk space", True, detail)


def _mib(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB" if n >= 1024**3 else f"{n / 1024**2:.0f} MiB"


@check
def log_files(s: Any) -> Iterator[Result]:
    for kind, src in (("queue_log", s.sources.queue_log), ("cdr", s.sources.cdr)):
        if src is None:
            continue
        p = src.path
        if p.exists():
            ok = os.access(p, os.R_OK)
            yield Result(
                f"{kind} file",
                ok,
                f"{p} {'is readable' if ok else 'is not readable'}",
                "" if ok else "add the service user to the file's group (e.g. `usermod -aG asterisk callbackd`)",
            )
        elif p.parent.is_dir() and os.access(p.parent, os.R_OK | os.X_OK):
            yield Result(f"{kind} file", True, f"{p} does not exist yet; it is read when it appears", warning=True)
        else:
            yield Result(
                f"{kind} file",
                False,
                f"{p}: its folder is missing or unreadable",
                f"check [sources.{kind}] path and the folder's permissions",
            )
    if s.sources.queue_log is None and s.sources.cdr is None and not getattr(s.sources, "ami", None):
        yield Result(
            "sources",
            False,
            "no call-log source is configured",
            "set [sources.queue_log] path (and/or [sources.cdr], [[sources.ami]])",
        )


@check
def http_port(s: Any) -> Iterator[Result]:
    if not s.http.enabled:
        return
    sock = socket.socket(socket.AF_INET6 if ":" in s.http.host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((s.http.host, s.http.port))
        yield Result("http", True, f"{s.http.host}:{s.http.port} is free")
    except OSError as exc:
        yield Result(
            "http",
            True,
            f"{s.http.host}:{s.http.port} is in use ({exc.strerror}): fine if the daemon "
            "is running, otherwise change [http] port",
            warning=True,
        )
    finally:
        sock.close()
    if s.http.host not in ("127.0.0.1", "::1", "localhost"):
        yield Result("http", True, f"listening on {s.http.host}: put it behind a TLS reverse proxy", warning=True)


@check
def twilio(s: Any) -> Iterator[Result]:
    tw = getattr(s, "twilio", None)
    if tw is None or not tw.account_sid:
        return
    try:
        from sms.twilio_http import twilio_client

        client = twilio_client(s)
        acct = client.api.v2010.accounts(tw.account_sid).fetch()
        yield Result(
            "twilio",
            True,
            f"credentials accepted (account {acct.friendly_name or tw.account_sid}, status {acct.status})",
        )
    except Exception as exc:  # noqa: BLE001 - any failure is the admin's to see
        yield Result(
            "twilio",
            False,
            f"account {tw.account_sid}: {exc}",
            "check [twilio] account_sid and the auth token (credential twilio_auth_token)",
        )


def run(settings: Any) -> list[Result]:
    out: list[Result] = []
    for fn in CHECKS:
        try:
            out.extend(fn(settings))
        except Exception as exc:  # noqa: BLE001 - a broken check is a failed check, not a crash
            out.append(Result(fn.__name__, False, f"the check itself failed: {exc}"))
    return out
