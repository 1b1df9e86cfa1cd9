"""Shared fixtures: the captures folder, and a fresh store on SQLite and on PostgreSQL.

PostgreSQL is the machine's server at 127.0.0.1:5432 (CALLBACKD_TEST_PG, an
admin URL); each test session gets a database of its own, each test an empty
schema. If the server is down the fixture starts it; if it cannot, the
PostgreSQL half of the suite fails — it is never skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import settings as hypothesis_settings

from callback_queue.clock import FakeClock
from callback_queue.store import Store

ROOT = Path(__file__).resolve().parents[1]

# Property tests: "ci" (default) is the bounded fuzz run - hypothesis' 100 examples, no deadline (two
# shared cores); CALLBACKD_FUZZ=full is the long run, 20x the examples. A test that sets max_examples
# itself keeps its own count in both.
hypothesis_settings.register_profile("ci", deadline=None)
hypothesis_settings.register_profile("full", deadline=None, max_examples=2000)
hypothesis_settings.load_profile("full" if os.environ.get("CALLBACKD_FUZZ") == "full" else "ci")
PG_ADMIN = os.environ.get("CALLBACKD_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def shared_dir() -> Path:
    env = os.environ.get("CALLBACKD_SHARED")
    candidates = [Path(env)] if env else [ROOT.parent / "shared", ROOT.parent.parent / "shared"]
    for c in candidates:
        if (c / "asterisk" / "captures").is_dir():
            return c
    raise RuntimeError(f"shared/ folder not found (tried {candidates}); set CALLBACKD_SHARED")


@pytest.fixture(scope="session")
def shared() -> Path:
    return shared_dir()


@pytest.fixture(scope="session")
def captures(shared: Path) -> Path:
    return shared / "asterisk" / "captures"


def _pg_up(url: str) -> bool:
    eng = sa.create_engine(url)
    try:
        with eng.connect() as c:
            c.execute(sa.text("SELECT 1"))
        return True
    except sa.exc.OperationalError:
        return False
    finally:
        eng.dispose()


def ensure_postgres() -> None:
    if _pg_up(PG_ADMIN):
        return
    versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
    if versions and shutil.which("pg_ctlcluster"):
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"],
                       check=False, capture_output=True)
        for _ in range(60):
            if _pg_up(PG_ADMIN):
                return
            time.sleep(0.5)
    raise RuntimeError(f"PostgreSQL is not reachable at {PG_ADMIN} and could not be started")


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    ensure_postgres()
    name = f"callbackd_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
    migrated = Store(url)
    migrated.upgrade()
    migrated.dispose()
    yield url
    with admin.connect() as c:
        c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _truncate_pg(url: str) -> None:
    eng = sa.create_engine(url)
    with eng.begin() as c:
        tables = [r[0] for r in c.execute(sa.text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"))]
        if tables:
            c.execute(sa.text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"))
    eng.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database on each backend."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'callbackd.db'}"
        s = Store(url)
        s.upgrade()
        s.dispose()
        return url
    url = request.getfixturevalue("pg_database")
    _truncate_pg(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables at all, on each backend (PostgreSQL: a throwaway database)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    request.getfixturevalue("pg_database")  # makes sure the server is up
    with throwaway_pg_database("callbackd_empty") as url:
        yield url


@contextlib.contextmanager
def throwaway_pg_database(prefix: str) -> Iterator[str]:
    """The URL of an empty PostgreSQL database of its own, dropped (connections and all) at the end."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield sa.engine.make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = Store(store_url)
    yield s
    s.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 11, 27, 10, 0, tzinfo=UTC))


@pytest.fixture
def clean_cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CALLBACKD_* variable of the caller's environment (but the test database's and the shared folder's)
    reaches the CLI, and no ./config/callbackd.toml of the working tree is picked up: the test's folder is
    the working directory. Used through `pytestmark = pytest.mark.usefixtures("clean_cli_env")`."""
    for key in list(os.environ):
        if key.startswith("CALLBACKD_") and key not in ("CALLBACKD_TEST_PG", "CALLBACKD_SHARED"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def structlog_defaults() -> Iterator[None]:
    """Every test starts from structlog's defaults, so info lines reach capture_logs whatever an earlier test
    configured (a CLI command run in-process sets warning level); the configuration is put back after."""
    import structlog

    old = structlog.get_config()
    structlog.reset_defaults()
    yield
    structlog.configure(**old)
