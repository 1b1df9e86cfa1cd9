"""Bounded waits on a stalled PostgreSQL: `[store] statement_timeout` and `link_timeout`.

The server cancels a statement that outlasts statement_timeout (a long query, a wait behind another
session's lock) and the store raises its retryable StoreError; a link that goes silent (a FaultProxy
that stops forwarding but keeps acknowledging, like a frozen server) ends in a StoreError within
statement_timeout + link_timeout, and the pool reconnects once it answers again. `db upgrade` and
`import` run without a statement timeout: each is made to wait behind a lock for several times the
configured timeout and still succeeds.

Time bounds are generous (a loaded machine): each asserts that a wait *ended*, far below the wait it
would otherwise have been, never how fast.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from support.crash import CALLBACKD, ROOT, wait_for, write_config
from support.faultproxy import FaultProxy
from support.traffic import queue_log_lines

from callback_queue import schema as t
from callback_queue.errors import ConfigError, StoreError
from callback_queue.store import Store
from daemon.app import open_bulk_store, open_store
from daemon.settings import StoreSettings, load_settings
from tests.conftest import _truncate_pg, throwaway_pg_database

#: a wait a statement would sit in without the timeout; the assertions only need it far above the bounds
LONG = 60
GENEROUS = 30.0


@pytest.fixture
def pg_url(pg_database: str) -> str:
    _truncate_pg(pg_database)
    return pg_database


@pytest.fixture
def new_database() -> Iterator[str]:
    """An empty PostgreSQL database of this test's own."""
    with throwaway_pg_database("callbackd_timeouts") as url:
        yield url


class Holder:
    """Another session holding a lock inside an open transaction until `release()`."""

    def __init__(self, url: str, *statements: str) -> None:
        self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        self.conn = self.engine.connect()
        self.conn.begin()
        for sql in statements:
            self.conn.exec_driver_sql(sql)

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()
        self.engine.dispose()


def lock_waiters(url: str, at_least_s: float) -> list[int]:
    """pids of sessions of that database waiting on a lock for at least `at_least_s` (the server's clock)."""
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with eng.connect() as c:
            return list(c.execute(sa.text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
                " AND pid <> pg_backend_pid() AND now() - query_start >= make_interval(secs => :s)"),
                {"s": at_least_s}).scalars())
    finally:
        eng.dispose()


def waits_behind(holder: Holder, url: str, cfg: Path, *args: str) -> str:
    """`callbackd ARGS`, started while `holder` keeps its lock: it is still there after waiting 2 s on the
    lock (by the server's clock); the lock released, it succeeds. Its standard output."""
    try:
        proc = subprocess.Popen([*CALLBACKD, "--config", str(cfg), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        assert wait_for(lambda: lock_waiters(url, 2.0) or proc.poll() is not None, 60, interval=0.3)
        assert proc.poll() is None, proc.communicate()
    finally:
        holder.release()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out


# -- settings ------------------------------------------------------------------------------------
def test_settings_parse_validate_and_name_the_field(tmp_path: Path):
    d = StoreSettings()
    assert d.statement_timeout.total_seconds() == 30 and d.link_timeout.total_seconds() == 20
    s = StoreSettings(statement_timeout="1500ms", link_timeout="5s")
    assert s.statement_timeout.total_seconds() == 1.5 and s.link_timeout.total_seconds() == 5
    off = StoreSettings(statement_timeout="0", link_timeout=0)
    assert off.statement_timeout.total_seconds() == 0 and off.link_timeout.total_seconds() == 0
    cfg = tmp_path / "callbackd.toml"
    for key, value, why in (("statement_timeout", "abc", "is not a duration"),
                            ("link_timeout", "0.5s", "at least 1s"),
                            ("statement_timeout", "30d", "at most 24d")):
        cfg.write_text(f'[store]\n{key} = "{value}"\n')
        with pytest.raises(ConfigError) as err:
            load_settings(cfg, env={})
        assert f"store.{key}: " in str(err.value) and why in str(err.value), str(err.value)
    env = load_settings(None, env={"CALLBACKD_STORE__STATEMENT_TIMEOUT": "0", "CALLBACKD_STORE__LINK_TIMEOUT": "7s"})
    assert env.store.statement_timeout.total_seconds() == 0 and env.store.link_timeout.total_seconds() == 7
    assert env.redacted()["store"]["link_timeout"] == "7s"


def test_sqlite_ignores_the_postgresql_bounds(tmp_path: Path):
    store = Store(f"sqlite:///{tmp_path / 'x.db'}", statement_timeout=0.5, link_timeout=1)
    try:
        with store.read() as conn:
            assert conn.exec_driver_sql("SELECT 1").scalar() == 1
    finally:
        store.dispose()


# -- the daemon's connections ----------------------------------------------------------------------
def test_every_connection_has_the_statement_timeout_and_the_link_bounds(pg_url: str):
    url = sa.engine.make_url(pg_url).update_query_dict({"options": "-c search_path=public"})
    store = Store(url.render_as_string(hide_password=False), statement_timeout=1.5, link_timeout=8, pool_size=2)
    try:
        with store.engine.connect() as a, store.engine.connect() as b:  # two pooled connections at once
            for conn in (a, b):
                assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "1500ms"
                assert conn.exec_driver_sql("SHOW search_path").scalar() == "public"  # the URL's options kept
                fd = conn.connection.driver_connection.fileno()
                sock = socket.socket(fileno=os.dup(fd))
                try:
                    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 8000
                    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 4
                    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
                finally:
                    sock.close()
    finally:
        store.dispose()
    plain = Store(pg_url)  # what tests and benches build: no bounds unless asked
    try:
        with plain.read() as conn:
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "0"
    finally:
        plain.dispose()


def test_a_statement_longer_than_the_timeout_is_a_store_error(pg_url: str):
    store = Store(pg_url, statement_timeout=0.5, link_timeout=5)
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreError, match="statement timeout"), store.read() as conn:
            conn.exec_driver_sql(f"SELECT pg_sleep({LONG})")
        assert time.monotonic() - t0 < GENEROUS
        assert store.outage and "statement timeout" in store.outage
        with store.read() as conn:  # the connection (or the pool) is usable again at once
            assert conn.exec_driver_sql("SELECT 1").scalar() == 1
        assert store.outage is None
    finally:
        store.dispose()


def test_a_wait_behind_a_row_lock_ends_in_a_store_error(pg_url: str):
    seed = Store(pg_url)
    with seed.write() as conn:
        conn.execute(t.users.insert().values(name="lockee", role="operator", created_at=datetime.now(UTC)))
    seed.dispose()
    holder = Holder(pg_url, "SELECT id FROM users WHERE name = 'lockee' FOR UPDATE")
    store = Store(pg_url, statement_timeout=0.5, link_timeout=5)
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreError, match="statement timeout"), store.write() as conn:
            conn.exec_driver_sql("UPDATE users SET role = 'admin' WHERE name = 'lockee'")
        assert time.monotonic() - t0 < GENEROUS
    finally:
        holder.release()
    try:
        with store.write() as conn:  # the lock is gone: the same update goes through
            assert conn.exec_driver_sql("UPDATE users SET role = 'admin' WHERE name = 'lockee'").rowcount == 1
    finally:
        store.dispose()


def test_a_stalled_link_is_a_store_error_and_the_pool_recovers(pg_url: str):
    target = sa.engine.make_url(pg_url)
    with FaultProxy(target.host or "127.0.0.1", target.port or 5432, name="pg") as proxy:
        url = target.set(port=proxy.port).render_as_string(hide_password=False)
        store = Store(url, statement_timeout=1, link_timeout=1)
        fresh = Store(url, statement_timeout=1, link_timeout=1)
        # without the bounds a read waits as long as the link stays silent: here until this timer resumes
        # it, and the read then succeeds - the test fails, it never hangs
        safety = threading.Timer(GENEROUS, proxy.resume)
        try:
            with store.read() as conn:
                assert conn.exec_driver_sql("SELECT 1").scalar() == 1
            proxy.stall()
            safety.start()
            # a pooled connection: no answer within statement_timeout + link_timeout (pre-ping), then no new
            # connection within connect_timeout
            t0 = time.monotonic()
            with pytest.raises(StoreError), store.read() as conn:
                conn.exec_driver_sql("SELECT 1")
            waited = time.monotonic() - t0
            assert waited < GENEROUS and store.outage
            with pytest.raises(StoreError, match="timeout"), fresh.read() as conn:  # connecting: connect_timeout
                conn.exec_driver_sql("SELECT 1")
            safety.cancel()
            proxy.resume()
            for s in (store, fresh):
                with s.read() as conn:
                    assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "1s"
                assert s.outage is None
            print(f"\nstalled link: StoreError after {waited:.1f} s (deadline 2 s + connect_timeout 2 s)")
        finally:
            safety.cancel()
            store.dispose()
            fresh.dispose()


def test_statement_timeout_zero_means_none(pg_url: str):
    store = Store(pg_url, statement_timeout=0, link_timeout=5)
    try:
        with store.read() as conn:
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "0"
    finally:
        store.dispose()


# -- db upgrade and import run without it -----------------------------------------------------------
def test_import_waits_behind_a_lock_longer_than_the_daemons_statement_timeout(pg_url: str, tmp_path: Path):
    cfg = write_config(tmp_path, pg_url)
    cfg.write_text(cfg.read_text().replace("[store]\n", '[store]\nstatement_timeout = "0.5s"\nlink_timeout = "5s"\n'))
    settings = load_settings(cfg, env={})
    qlog = tmp_path / "queue_log"
    qlog.write_text("\n".join(queue_log_lines(7, 200, start_ts=int(time.time()) - 86400)) + "\n")
    holder = Holder(pg_url, "LOCK TABLE attempts IN ACCESS EXCLUSIVE MODE")
    try:
        daemon_store = open_store(settings)  # the daemon's store gives up behind the lock...
        try:
            with pytest.raises(StoreError, match="statement timeout"), daemon_store.read() as conn:
                conn.exec_driver_sql("SELECT count(*) FROM attempts")
        finally:
            daemon_store.dispose()
        bulk = open_bulk_store(settings)
        try:
            with bulk.read() as conn:
                assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "0"
        finally:
            bulk.dispose()
    except BaseException:
        holder.release()
        raise
    # ...the import, with the same configuration, waits (4x the timeout, by the server's clock)
    out = waits_behind(holder, pg_url, cfg, "import", "queue-log", str(qlog))
    assert " attempts" in out, out
    eng = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    try:
        with eng.connect() as c:
            assert c.exec_driver_sql("SELECT count(*) FROM attempts").scalar() > 0
    finally:
        eng.dispose()


def test_db_upgrade_waits_behind_a_lock_longer_than_the_statement_timeout(new_database: str, tmp_path: Path):
    cfg = write_config(tmp_path, new_database)
    cfg.write_text(cfg.read_text().replace("[store]\n", '[store]\nstatement_timeout = "0.5s"\n'))
    # another session creating alembic_version, uncommitted: the migration's own CREATE TABLE waits for it
    holder = Holder(new_database, "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
    waits_behind(holder, new_database, cfg, "db", "upgrade")
    store = Store(new_database)
    try:
        store.require_current()
    finally:
        store.dispose()
