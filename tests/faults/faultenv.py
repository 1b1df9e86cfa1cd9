"""Helpers for the link-fault suites: the daemon's JSON log read back, a private PostgreSQL, Prism.

The private PostgreSQL is initdb'ed into a temporary folder as the `postgres` OS user and started with
pg_ctl on a free port, so a test may restart it (or stop it) without touching the shared cluster at
127.0.0.1:5432 that other tests use.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from callback_queue.store import Store
from tests.support.prism import free_port, prism


# -- the daemon's log ----------------------------------------------------------------------------
@dataclass
class LogReader:
    """The JSON lines a daemon subprocess wrote to its stderr file; `mark()` then `since()` reads one phase."""

    path: Path
    _mark: int = 0

    def lines(self) -> list[str]:
        return self.path.read_text(errors="replace").splitlines() if self.path.exists() else []

    def mark(self) -> None:
        self._mark = len(self.lines())

    def since(self) -> tuple[list[dict[str, Any]], list[str]]:
        """(JSON records, lines that are not JSON: tracebacks and the like) written since `mark()`."""
        records, other = [], []
        for line in self.lines()[self._mark:]:
            try:
                records.append(json.loads(line))
            except ValueError:
                other.append(line)
        return records, other


def events(records: list[dict[str, Any]], *names: str) -> list[dict[str, Any]]:
    return [r for r in records if r.get("event") in names]


def loud(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(level, event) of every warning and error: what an operator is paged or alerted by."""
    return [(r["level"], r["event"]) for r in records if r.get("level") in ("warning", "error", "critical")]


# -- a private PostgreSQL ------------------------------------------------------------------------
def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin")
    return Path(found[-1]).parent


class PrivatePostgres:
    """A throwaway PostgreSQL cluster (trust auth) on 127.0.0.1:<free port>, run as the postgres user."""

    def __init__(self) -> None:
        self.bin = _pg_bin()
        self.dir = Path(tempfile.mkdtemp(prefix="callbackd-pg-"))
        self.data = self.dir / "data"
        self.logfile = self.dir / "server.log"
        self.port = free_port()
        as_root = os.geteuid() == 0
        self._prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
        if as_root:
            shutil.chown(self.dir, "postgres", "postgres")

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([*self._prefix, *args], capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}\n"
                               f"{self.server_log()[-2000:]}")
        return r

    def server_log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def init(self) -> PrivatePostgres:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync",
                  "-E", "UTF8", "--locale", "C")
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.dir}'\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nshared_buffers = 16MB\n"
                    "max_connections = 50\n")
        return self

    def pg_ctl(self, *args: str) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "60", *args)

    def start(self) -> None:
        self.pg_ctl("start")

    def restart(self) -> None:
        """pg_ctl restart -m fast: every session is terminated, the server comes back on the same port."""
        self.pg_ctl("restart", "-m", "fast")

    def stop(self) -> None:
        self.pg_ctl("stop", "-m", "immediate")

    def url(self, database: str = "postgres", port: int | None = None) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{port or self.port}/{database}"

    def create_database(self, name: str) -> str:
        admin = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as c:
                c.execute(sa.text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        store = Store(self.url(name))
        store.upgrade()
        store.dispose()
        return self.url(name)

    def destroy(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


# -- fixtures (imported by the test modules: this folder has no conftest.py of its own, because a second
# module named `conftest` would shadow tests/conftest.py for the modules that import from it) --------
@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    """A PostgreSQL of this module's own: tests may restart it."""
    pg = PrivatePostgres().init()
    pg.start()
    try:
        yield pg
    finally:
        pg.destroy()


@pytest.fixture(scope="module")
def prism_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with prism(tmp_path_factory.mktemp("prism")) as url:
        yield int(url.rsplit(":", 1)[1])
