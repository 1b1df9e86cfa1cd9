"""The database: engines, transactions and schema migrations.

SQLite (WAL, busy timeout) is the embedded default; PostgreSQL is the
multi-instance store. SQLite write transactions start with BEGIN IMMEDIATE so
two writers queue on the busy timeout instead of failing on a lock upgrade.

On PostgreSQL a stalled database must not hang a job until the watchdog fires (`_pg_engine`): the
server cancels a statement after `statement_timeout` (lock waits included); TCP keepalives,
`tcp_user_timeout` and `connect_timeout` drop a link that went silent after about `link_timeout`; and a
server that has not answered one exchange within statement_timeout + link_timeout (frozen, or behind a
proxy that still acknowledges every packet, where TCP sees nothing wrong) is given up on by the client.
Each ends in an OperationalError, which `Store._translate` turns into a retryable StoreError.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import inspect
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from .errors import SchemaOutOfDate, StoreError

MIGRATIONS = Path(__file__).parent / "migrations"


#: PRAGMA cache_size of every SQLite connection (negative: KiB)
SQLITE_CACHE_KIB = -4096


class Store:
    """An engine plus the transaction helpers every repository uses."""

    def __init__(self, url: str, *, busy_timeout_ms: int = 30_000, pool_size: int = 5,
                 statement_timeout: float | None = None, link_timeout: float | None = None) -> None:
        """`statement_timeout`, `link_timeout` (seconds; None or 0: none): PostgreSQL only, see the module
        docstring. SQLite's lock waits are bounded by `busy_timeout_ms`."""
        self.url = url
        self.dialect = sa.engine.make_url(url).get_backend_name()
        self.statement_timeout, self.link_timeout = statement_timeout or 0.0, link_timeout or 0.0
        #: the first line of the error that made the database unusable; None once a transaction succeeds
        self.outage: str | None = None
        #: a full disk: the first line of the error the last write transaction ended in, kept until a write
        #: transaction that changed something commits. SQLite's "database or disk is full" fails the writes that
        #: need new pages while a write of nothing - the heartbeat's - still commits: that is no recovery, so
        #: `outage` stays set meanwhile too (the daemon's store.recovered waits for a write that stored data)
        self.write_outage: str | None = None
        try:
            if self.dialect == "sqlite":
                self.engine = _sqlite_engine(url, busy_timeout_ms)
            else:
                self.engine = _pg_engine(url, pool_size, self.statement_timeout, self.link_timeout)
        except (SQLAlchemyError, ImportError) as exc:
            raise StoreError(f"cannot open store {redact_url(url)}: {exc}") from exc

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A read-write transaction (BEGIN IMMEDIATE on SQLite)."""
        try:
            with self._translate(), self.engine.connect() as conn:
                if self.is_sqlite:
                    conn = conn.execution_options(sqlite_immediate=True)
                before = _changes(conn) if self.write_outage is not None else None
                with conn.begin():
                    yield conn
                    wrote = self.write_outage is None or _wrote(conn, before)
                if wrote:
                    self.write_outage = None
        except StoreError as exc:
            self.write_outage = self.outage if _disk_full(exc.__cause__) else None
            raise

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        with self._translate(), self.engine.connect() as conn, conn.begin():
            yield conn

    @contextlib.contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """PostgreSQL: a connection in autocommit mode, for statements that are atomic on their own (one
        SELECT; one claim or sweep statement): no BEGIN and COMMIT round trips. SQLite: a read transaction."""
        if self.is_sqlite:
            with self.read() as conn:
                yield conn
            return
        with self._translate(), self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            yield conn

    @contextlib.contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except DBAPIError as exc:
            # the server is gone, restarting or unreachable (or SQLite locked past the busy timeout): retryable.
            # pool_pre_ping replaces dead pooled connections at checkout, so the next transaction reconnects.
            if not (isinstance(exc, OperationalError) or exc.connection_invalidated):
                raise
            self.outage = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc.orig).__name__
            raise StoreError(f"database error: {exc.orig}") from exc
        else:
            self.outage = self.write_outage

    def dispose(self) -> None:
        self.engine.dispose()

    # -- schema ----------------------------------------------------------------
    def _alembic_config(self, conn: Connection):  # type: ignore[no-untyped-def]
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        return cfg

    # Each feature area keeps its own migration branch off the initial schema
    # (planning, SMS, users, ...), so the schema is current when *every* head is applied.
    def upgrade(self, revision: str = "heads") -> tuple[str | None, str | None]:
        """Migrate to `revision` (default: all heads); returns (before, after)."""
        from alembic import command

        before = self.current_revision()
        with self._translate(), self.engine.begin() as conn:
            command.upgrade(self._alembic_config(conn), revision)
        return before, self.current_revision()

    def current_heads(self) -> set[str]:
        # what alembic's MigrationContext.get_current_heads() reads, without importing alembic and mako
        # (about 2 MiB) into the daemon, which checks the schema once at start
        with self._translate(), self.engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return set()
            return set(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars())

    def script_heads(self) -> set[str]:
        from alembic.script import ScriptDirectory

        with self.engine.connect() as conn:
            return set(ScriptDirectory.from_config(self._alembic_config(conn)).get_heads())

    def current_revision(self) -> str | None:
        """The applied revision(s), comma-separated, or None for an empty database."""
        heads = self.current_heads()
        return ",".join(sorted(heads)) if heads else None

    def head_revision(self) -> str | None:
        heads = self.script_heads()
        return ",".join(sorted(heads)) if heads else None

    def require_current(self) -> None:
        """Refuse to run on a schema that is missing or out of date."""
        current, head = self.current_heads(), declared_heads() or self.script_heads()
        if current != head:
            state = "empty" if not current else f"at revision {','.join(sorted(current))}"
            raise SchemaOutOfDate(
                f"the database {redact_url(self.url)} is {state}, callbackd needs revision "
                f"{','.join(sorted(head))}: run `callbackd db upgrade`"
            )


def _changes(conn: Connection) -> int | None:
    """SQLite: the rows this connection has changed so far (None on PostgreSQL)."""
    return getattr(conn.connection.dbapi_connection, "total_changes", None)


def _wrote(conn: Connection, before: int | None) -> bool:
    """Whether the transaction under way has changed anything (asked only while writes fail for space)."""
    if conn.dialect.name == "sqlite":
        return _changes(conn) != before
    return bool(conn.exec_driver_sql("SELECT pg_current_xact_id_if_assigned() IS NOT NULL").scalar())


def _disk_full(exc: BaseException | None) -> bool:
    """The database could not store data for want of space (SQLite's SQLITE_FULL, PostgreSQL's 53100)."""
    orig = getattr(exc, "orig", None)
    return (getattr(orig, "sqlite_errorcode", None) == 13 or getattr(orig, "sqlstate", None) == "53100"
            or "disk is full" in str(orig))


def declared_heads() -> set[str]:
    """The migrations' heads (revisions nothing revises or depends on) read from their files' literal
    `revision`, `down_revision` and `depends_on`, without importing alembic and mako into the daemon;
    empty when a file is beyond that (computed values, branch labels): ask alembic then."""
    revisions: set[str] = set()
    below: set[str] = set()
    for path in sorted((MIGRATIONS / "versions").glob("*.py")):
        found: dict[str, object] = {}
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else (
                node.target if isinstance(node, ast.AnnAssign) else None)
            if isinstance(target, ast.Name) and target.id in ("revision", "down_revision", "depends_on"):
                try:
                    found[target.id] = ast.literal_eval(node.value)  # type: ignore[union-attr, arg-type]
                except ValueError:
                    return set()
        if "revision" not in found:
            continue  # versions/__init__.py
        if not isinstance(found["revision"], str):
            return set()
        revisions.add(found["revision"])
        for key in ("down_revision", "depends_on"):
            ids = found.get(key)
            ids = (ids,) if isinstance(ids, str) else ids or ()
            if not isinstance(ids, tuple | list) or not all(isinstance(x, str) for x in ids):
                return set()
            below.update(ids)
    return revisions - below if below <= revisions else set()


def link_connect_args(link_timeout: float) -> dict[str, int]:
    """libpq parameters that notice a dead or silent link within about `link_timeout` seconds: data the
    server's host does not acknowledge ends the connection after `tcp_user_timeout`; an idle pooled
    connection is probed by keepalives (idle, then `count` probes `interval` apart); a connection attempt
    gives up after `connect_timeout` (whole seconds, libpq's minimum is 2). Empty for 0: the OS defaults."""
    if link_timeout <= 0:
        return {}
    return {
        "tcp_user_timeout": max(1, round(link_timeout * 1000)),
        "keepalives": 1,
        "keepalives_idle": max(1, int(link_timeout / 2)),
        "keepalives_interval": max(1, int(link_timeout / 6)),
        "keepalives_count": 3,
        "connect_timeout": max(2, math.ceil(link_timeout)),
    }


def _pg_engine(url: str, pool_size: int, statement_timeout: float, link_timeout: float) -> Engine:
    parsed = sa.engine.make_url(url)
    # parameters given in the URL's query win (an operator's own tcp_user_timeout, say); `options` add up
    connect_args: dict[str, Any] = {k: v for k, v in link_connect_args(link_timeout).items()
                                    if k not in parsed.query}
    if statement_timeout > 0:
        given = parsed.query.get("options", "")
        given = " ".join(given) if isinstance(given, tuple) else given
        ms = max(1, math.ceil(statement_timeout * 1000))
        connect_args["options"] = f"{given} -c statement_timeout={ms}".strip()
    engine = sa.create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
                              connect_args=connect_args)
    deadline = statement_timeout + link_timeout if statement_timeout > 0 and link_timeout > 0 else None
    bounded = _bounded_connection() if deadline is not None and parsed.get_driver_name() == "psycopg" else None
    if bounded is not None:

        @event.listens_for(engine, "do_connect")
        def _connect(_dialect, _record, cargs, cparams):  # type: ignore[no-untyped-def]
            conn = bounded.connect(*cargs, **cparams)
            conn.deadline = deadline
            return conn

    return engine


@functools.cache
def _bounded_connection() -> Any:
    """psycopg's Connection whose every exchange with the server (execute, fetch, commit, rollback, ping:
    they all go through `Connection.wait`) ends after `deadline` seconds: on expiry the connection is
    closed (its protocol state is unknown) and an OperationalError raised; SQLAlchemy then sees a
    disconnect and drops it from the pool. None if this psycopg's `wait` takes no timeout (older than 3.3)."""
    import psycopg

    params = inspect.signature(psycopg.Connection.wait).parameters
    expired = getattr(psycopg.errors, "_WaitTimeout", None)  # what `wait` raises on its timeout (private)
    if "timeout" not in params or "interval" not in params or expired is None:
        return None

    class BoundedConnection(psycopg.Connection):  # type: ignore[type-arg]
        deadline: float | None = None

        def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
            if timeout is not None or self.deadline is None:
                return super().wait(gen, interval, timeout)
            try:
                return super().wait(gen, interval, self.deadline)
            except expired as exc:
                self.pgconn.finish()
                raise psycopg.OperationalError(
                    f"no answer from the database in {self.deadline:g} s (statement_timeout + link_timeout): "
                    "the server or the link is stalled; the connection is dropped") from exc

    return BoundedConnection


def _sqlite_engine(url: str, busy_timeout_ms: int) -> Engine:
    parsed = sa.engine.make_url(url)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        url, connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False}
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        # let SQLAlchemy's begin event emit BEGIN itself (pysqlite's own is deferred-only)
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        # a 4 MiB page cache per connection (SQLite's default is 2 MiB): it fills as the database grows and is
        # never given back, so a pool of large caches is a daemon whose memory creeps up for days
        # (bench/soak.py); a backfill raises its own connection's cache for its transaction (BulkLoad)
        cur.execute(f"PRAGMA cache_size = {SQLITE_CACHE_KIB}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        if conn.get_execution_options().get("sqlite_immediate"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")

    return engine


def default_sqlite_url(state_dir: str | os.PathLike[str]) -> str:
    return f"sqlite:///{Path(state_dir).absolute() / 'callbackd.db'}"


def redact_url(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparseable URL is shown as a placeholder
        return "<invalid url>"
