"""/healthz is the daemon's own health verdict; /readyz answers within a bounded time and fails while the
store's writes fail (a full disk), even when a write of nothing - the heartbeat's - still commits."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from console_support import app, services
from sms_support import settings_for
from starlette.testclient import TestClient
from structlog.testing import capture_logs

from callback_queue import schema as t
from callback_queue.clock import FakeClock, SystemClock
from callback_queue.errors import StoreError
from callback_queue.store import Store
from daemon.app import Daemon
from daemon.http import app as http_app

GENEROUS = 30.0


def test_healthz_follows_the_verdict_it_is_given(store: Store, clock: FakeClock) -> None:
    svc = services(store, clock)
    verdict = [(True, "ok")]
    svc.extra["health"] = lambda: verdict[0]
    with TestClient(app(svc)) as client:
        assert client.get("/healthz").status_code == 200
        verdict[0] = (False, "no heartbeat for 16 s")
        r = client.get("/healthz")
        assert r.status_code == 503 and r.json() == {"status": "unhealthy", "reason": "no heartbeat for 16 s"}


class _Dead:
    name = "stuck-part"

    def alive(self) -> bool:
        return False


def test_healthz_of_a_running_daemon_is_503_while_the_daemon_says_it_is_unhealthy(tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    store = Store(f"sqlite:///{tmp_path / 'callbackd.db'}")
    store.upgrade()
    settings = settings_for(tmp_path, store.url, http={"host": "127.0.0.1", "port": 0})
    daemon = Daemon(settings, store=store, clock=SystemClock())
    thread = threading.Thread(target=daemon.run, daemon=True)

    def get(path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{daemon.http.port}{path}", timeout=GENEROUS) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    with capture_logs() as logs:
        thread.start()
        try:
            deadline = time.monotonic() + GENEROUS
            while daemon.http is None or not daemon.http.server.started or not daemon.healthy()[0]:
                assert time.monotonic() < deadline and thread.is_alive(), "the daemon did not start"
                time.sleep(0.05)
            assert get("/healthz") == 200
            # the daemon's queue and ingestor log each callback's changes (a CLI command's stay silent)
            from callback_queue.queue import SILENT

            assert daemon.queue.log is not SILENT and daemon.ingestor.log.__class__.__name__ != "_NoLog"
            daemon.components.append(_Dead())
            while not any(e["event"] == "daemon.unhealthy" for e in list(logs)):
                assert time.monotonic() < deadline, "the daemon never found itself unhealthy"
                time.sleep(0.05)
            assert get("/healthz") == 503
            daemon.components.remove(daemon.components[-1])
            assert get("/healthz") == 200
        finally:
            daemon.stop()
            thread.join(GENEROUS)
    assert not thread.is_alive()


class _SilentStore:
    """A store whose reads wait until released: a database that does not answer."""

    is_sqlite = False
    write_outage = None

    def __init__(self) -> None:
        self.release = threading.Event()
        self.reads = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[Any]:
        self.reads += 1
        self.release.wait(GENEROUS * 2)
        raise StoreError("database error: no answer")
        yield  # pragma: no cover


def test_readyz_answers_within_its_deadline_when_the_database_does_not(store: Store, clock: FakeClock,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_app, "READY_DEADLINE", 0.5)
    silent = _SilentStore()
    svc = services(store, clock)
    svc.store = silent  # type: ignore[assignment]
    svc.checks["pbx"] = lambda: (True, "connected")
    try:
        with TestClient(app(svc)) as client:
            for _ in range(3):
                r = client.get("/readyz")
                assert r.status_code == 503
                assert r.json()["checks"] == {"database": {"ok": False, "detail": "no answer within 0.5 s"},
                                              "pbx": {"ok": True, "detail": "connected"}}
            assert silent.reads == 1  # the later probes waited for the same run instead of starting more
            silent.release.set()
            deadline = time.monotonic() + GENEROUS
            while client.get("/readyz").json()["checks"]["database"]["detail"] != "database error: no answer":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            client.get("/readyz")
            assert silent.reads >= 2  # a finished run is not reused: the next probe asks again
    finally:
        silent.release.set()


@pytest.fixture
def tiny_sqlite(tmp_path: Path) -> Iterator[tuple[Store, list[int]]]:
    """A SQLite store whose file may not grow past `limit[0]` pages: SQLite's own "database or disk is full"."""
    store = Store(f"sqlite:///{tmp_path / 'callbackd.db'}")
    store.upgrade()
    limit = [0]

    @sa.event.listens_for(store.engine, "checkout")
    def _cap(dbapi_conn, _record, _proxy):  # type: ignore[no-untyped-def]
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA max_page_count = {limit[0]}" if limit[0] else "PRAGMA max_page_count = 1073741823")
        cur.close()

    with store.read() as conn:
        limit[0] = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
    yield store, limit
    store.dispose()


def _fill(store: Store, n: int = 200) -> None:
    with store.write() as conn:
        conn.execute(t.source_cursors.insert(), [{"name": f"source-{i}", "state": "x" * 2000,
                                                  "updated_at": FakeClock().now()} for i in range(n)])


def test_readyz_fails_while_writes_fail_on_a_full_disk_and_a_write_of_nothing_is_no_recovery(
        tiny_sqlite: tuple[Store, list[int]], clock: FakeClock) -> None:
    store, limit = tiny_sqlite
    svc = services(store, clock)
    with TestClient(app(svc)) as client:
        assert client.get("/readyz").status_code == 200
        with pytest.raises(StoreError, match="full"):
            _fill(store)
        with store.write() as conn:  # the heartbeat's write commits: it needs no new page
            conn.exec_driver_sql("SELECT 1")
        r = client.get("/readyz")
        assert r.status_code == 503 and "full" in r.json()["checks"]["database"]["detail"]
        limit[0] = 0  # space again: a write that stores something ends the outage
        store.dispose()
        _fill(store)
        assert store.write_outage is None
        assert client.get("/readyz").status_code == 200


def test_a_full_disk_is_one_outage_until_a_write_stores_data_again(tiny_sqlite: tuple[Store, list[int]],
                                                                    tmp_path: Path) -> None:
    """The ingest batch fails for space, the heartbeat's write of nothing commits: one store.unavailable
    naming the job that failed, no store.recovered until a write stores data again (it alternated every 5 s)."""
    from daemon.app import _Job

    store, limit = tiny_sqlite
    daemon = Daemon(settings_for(tmp_path, store.url), store=store, clock=SystemClock())

    def heartbeat() -> None:
        with store.write() as conn:
            conn.exec_driver_sql("SELECT 1")

    beat = daemon._guard(_Job("heartbeat", heartbeat))
    with capture_logs() as logs:
        for _ in range(3):
            daemon._guard(_Job("poll:queue_log:pbx", lambda: _fill(store)))()
            beat()
            daemon._guard(_Job("sweep", daemon.queue.sweep))()
        assert [(e["event"], e.get("job")) for e in logs if e["event"].startswith("store.")] == [
            ("store.unavailable", "poll:queue_log:pbx")]
        assert "full" in logs[0]["error"] and store.outage and store.write_outage
        limit[0] = 0
        store.dispose()
        daemon._guard(_Job("poll:queue_log:pbx", lambda: _fill(store)))()
    assert [e["event"] for e in logs if e["event"].startswith("store.")] == ["store.unavailable", "store.recovered"]
    assert store.outage is None and store.write_outage is None
