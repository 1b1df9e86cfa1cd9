"""Leadership for singleton duties when several daemons share one PostgreSQL.

The leader holds a PostgreSQL advisory lock on a connection of its own. The
lock is the lease: that session is given `idle_session_timeout` = the lease,
and the leader touches it every lease/3; a leader that dies, hangs or loses
the network stops touching it, PostgreSQL ends the session, the lock is
free, and another daemon takes it at its next try (within the lease).
Duties that must run once — file tails of a PBX, the AMI event stream,
planning — run only on the leader; claiming and dialing run everywhere
(claims are row locks). On SQLite there is one daemon: it always leads.
"""

from __future__ import annotations

import contextlib
import socket
import zlib
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from .logs import get_logger

LOCK_KEY = zlib.crc32(b"callbackd:leader")


class Leadership:
    def __init__(self, store: Any, *, lease: timedelta = timedelta(seconds=15), key: int = LOCK_KEY,
                 name: str | None = None) -> None:
        self.store = store
        self.lease = lease
        self.key = key
        self.name = name or socket.gethostname()
        self.log = get_logger("callbackd.leader")
        self.is_leader = store.is_sqlite
        self._conn: Any = None
        self._engine: Any = None

    def check(self) -> bool:
        """Keep the lease, or try to take it. Returns whether we lead now."""
        if self.store.is_sqlite:
            return True
        try:
            if self._conn is None:
                self._connect()
            if self.is_leader:
                self._conn.exec_driver_sql("SELECT 1")  # touches the session: the lease goes on
            else:
                got = self._conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar()
                if got:
                    self.is_leader = True
                    self.log.info("leader.acquired", instance=self.name)
        except Exception as exc:  # noqa: BLE001 - any failure means we cannot prove the lease
            if self.is_leader:
                self.log.error("leader.lost", instance=self.name, error=str(exc).splitlines()[0])
            self.is_leader = False
            self._drop()
        return self.is_leader

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
        self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def _drop(self) -> None:
        with contextlib.suppress(Exception):
            if self._conn is not None:
                self._conn.close()
        with contextlib.suppress(Exception):
            if self._engine is not None:
                self._engine.dispose()
        self._conn = self._engine = None

    def release(self) -> None:
        if self.is_leader and self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
            self.log.info("leader.released", instance=self.name)
        self.is_leader = self.store.is_sqlite
        self._drop()
