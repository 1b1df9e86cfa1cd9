"""Leadership for singleton duties when several daemons share one PostgreSQL.

The leader holds a PostgreSQL advisory lock on a connection of its own. The
lock is the lease: that session is given `idle_session_timeout` = the lease,
and the leader touches it every lease/3; a leader that dies, hangs or loses
the network stops touching it, PostgreSQL ends the session, the lock is
free, and another daemon takes it at its next try (within the lease).
Duties that must run once — file tails of a PBX, the AMI event stream,
planning — run only on the leader; claiming and dialing run everywhere
(claims are row locks). On SQLite there is one daemon: it always leads.

The server frees the lock no sooner than a lease after the last statement the
leader sent it, so the leader counts its lease from when it sent the last
statement the server answered, and steps down (`leader.lost`) once that is a
lease ago less a margin, whether or not the statement it is waiting on ever
comes back: a link that went silent without closing (a frozen proxy, a
stopped server whose host still acknowledges packets) cannot leave two
leaders. Each exchange on the lock's connection is bounded by the time the
lease has left (psycopg 3.3's `wait` timeout; `is_leader` checks the clock on
every read in any case), and a leader that stepped down drops its session
and tries to acquire again a lease later: the duties it had under way end
first (a file poll stuck on the same silent database), and another instance
can take over meanwhile instead of the lease going back and forth.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import zlib
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from callback_queue.store import _bounded_connection

from .logs import get_logger

LOCK_KEY = zlib.crc32(b"callbackd:leader")


class Leadership:
    def __init__(self, store: Any, *, lease: timedelta = timedelta(seconds=15), key: int = LOCK_KEY,
                 name: str | None = None, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.lease = lease
        self.key = key
        self.name = name or socket.gethostname()
        self.log = get_logger("callbackd.leader")
        self.monotonic = monotonic
        lease_s = lease.total_seconds()
        #: how long after sending the last answered statement the lease is held: the lease less a margin
        #: for the scheduling of this process and of the server's timer
        self.hold = lease_s - min(2.0, lease_s / 5)
        self._leading = store.is_sqlite
        self._confirmed = 0.0  # monotonic: when the last statement the server answered was sent
        self._announced = False  # leader.standby is logged once
        self._stale = False  # stepped down: the session may hold the lock still, and is dropped at the next check
        self._retry_at = 0.0  # monotonic: no try to acquire before this (a lease after stepping down)
        self._lock = threading.Lock()
        self._conn: Any = None
        self._engine: Any = None

    @property
    def is_leader(self) -> bool:
        """Whether this instance leads now: False as soon as its lease is not confirmed within `hold`."""
        if self._leading and not self.store.is_sqlite:
            age = self.monotonic() - self._confirmed
            if age >= self.hold:
                self._step_down(f"the lease was not confirmed for {age:.1f} s (leader_lease "
                                f"{self.lease.total_seconds():g} s): the database or the link does not answer")
        return self._leading

    def check(self) -> bool:
        """Keep the lease, or try to take it. Returns whether we lead now."""
        if self.store.is_sqlite:
            return True
        try:
            if self._stale and not self.is_leader:
                self._drop()  # a lock taken again on the same session would be re-entrant: a new session
            if not self._leading and self.monotonic() < self._retry_at:
                return False
            if self._conn is None:
                self._connect()
            if self.is_leader:
                sent = self.monotonic()
                self._bound(self._confirmed + self.hold - sent)
                self._conn.exec_driver_sql("SELECT 1")  # touches the session: the lease goes on
                with self._lock:
                    if self._leading:
                        self._confirmed = sent
            else:
                sent = self.monotonic()
                self._bound(self.hold)
                got = self._conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar()
                if got:
                    with self._lock:
                        self._leading, self._confirmed = True, sent
                    self._announced = True
                    self.log.info("leader.acquired", instance=self.name)
                elif not self._announced:
                    self._announced = True
                    self.log.info("leader.standby", instance=self.name,
                                  note="another instance leads; this one claims and dials, and takes over "
                                       "if the leader's lease runs out")
        except Exception as exc:  # noqa: BLE001 - any failure means we cannot prove the lease
            self._step_down(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            self._drop()
        return self.is_leader

    def _step_down(self, reason: str) -> None:
        with self._lock:
            was, self._leading = self._leading, False
            self._stale = self._stale or was
            if was:
                self._retry_at = self.monotonic() + self.lease.total_seconds()
        if was:
            self.log.error("leader.lost", instance=self.name, error=reason)

    def _bound(self, seconds: float) -> None:
        """The next exchange on the lock's connection gives up after `seconds` (at least 0.1)."""
        raw = getattr(getattr(self._conn.connection, "dbapi_connection", None), "deadline", False)
        if raw is not False:
            self._conn.connection.dbapi_connection.deadline = max(0.1, seconds)

    def _connect(self) -> None:
        ms = int(self.lease.total_seconds() * 1000)
        url = self.store.engine.url
        self._engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={
            "options": f"-c idle_session_timeout={ms}",
            "keepalives": 1, "keepalives_idle": max(1, ms // 3000), "keepalives_interval": 1,
            "keepalives_count": 3,
            # data the server's host does not acknowledge within the lease ends the session (a link dropping
            # packets): the lock is the server's to drop then anyway; a connection attempt gives up as soon
            "tcp_user_timeout": ms, "connect_timeout": max(2, -(-ms // 1000)),
        })
        bounded = _bounded_connection() if url.get_driver_name() == "psycopg" else None
        if bounded is not None:  # every exchange ends by the deadline `_bound` sets (a silent link included)

            @event.listens_for(self._engine, "do_connect")
            def _connect(_dialect, _record, cargs, cparams):  # type: ignore[no-untyped-def]
                conn = bounded.connect(*cargs, **cparams)
                conn.deadline = self.hold
                return conn

        self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def _drop(self) -> None:
        with contextlib.suppress(Exception):
            if self._conn is not None:
                self._conn.close()
        with contextlib.suppress(Exception):
            if self._engine is not None:
                self._engine.dispose()
        self._conn = self._engine = None
        self._stale = False

    def release(self) -> None:
        if self._leading and self._conn is not None:
            with contextlib.suppress(Exception):
                self._bound(self.hold)
                self._conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            self.log.info("leader.released", instance=self.name)
        with self._lock:
            self._leading = self.store.is_sqlite
        self._drop()
