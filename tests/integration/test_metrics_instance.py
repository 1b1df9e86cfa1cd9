"""/metrics: this instance's series (callbackd_leader, callbackd_check_up with a database sample), the source
idle series under its honest name, and answers while the database is down (the last figures, the database's
check at 0, a token accepted before still accepted)."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from console_support import app, bearer, seed, services, tokens
from starlette.testclient import TestClient

from callback_queue.clock import FakeClock
from callback_queue.store import Store
from callback_queue.users import Users
from daemon.settings import Settings


class _Down:
    """Every new connection of an engine fails like a server that is not there."""

    def __init__(self, store: Store) -> None:
        self.store, self.on = store, False
        sa.event.listen(store.engine, "do_connect", self._connect)

    def _connect(self, *_: object) -> None:
        if self.on:
            raise self.store.engine.dialect.loaded_dbapi.OperationalError("connection refused (test)")

    def __call__(self, on: bool) -> None:
        self.on = on
        self.store.engine.dispose()


def test_metrics_answer_through_a_database_outage(store: Store, clock: FakeClock) -> None:
    seed(store, clock, 3)
    toks = tokens(store, clock)
    settings = Settings.model_validate({"console": {"metrics_cache": "0s", "token_cache": "0s"}})
    svc = services(store, clock, settings)
    leading = [True]
    svc.extra.update(leader=lambda: leading[0], instance="cb-1")
    down = _Down(store)
    with TestClient(app(svc)) as client:
        r = client.get("/metrics", headers=bearer(toks["operator"]))
        assert r.status_code == 200
        assert 'callbackd_check_up{check="database"} 1.0' in r.text
        assert 'callbackd_leader{instance="cb-1"} 1.0' in r.text
        assert 'callbackd_callbacks{kind="recall",state="pending"} 3.0' in r.text
        assert "callbackd_source_lag_seconds" not in r.text and "# HELP callbackd_source_idle_seconds" in r.text

        down(True)
        leading[0] = False
        r = client.get("/metrics", headers=bearer(toks["operator"]))
        assert r.status_code == 200, r.text
        assert 'callbackd_check_up{check="database"} 0.0' in r.text
        assert 'callbackd_callbacks{kind="recall",state="pending"} 3.0' in r.text  # the last figures
        assert 'callbackd_leader{instance="cb-1"} 0.0' in r.text  # this instance's series are live
        # a token never accepted before cannot be checked now: no way in
        assert client.get("/metrics", headers=bearer(toks["admin"])).status_code == 503

        down(False)
        Users(store, clock).disable("otto")  # a user disabled in this process: its remembered token goes too
        down(True)
        assert client.get("/metrics", headers=bearer(toks["operator"])).status_code == 503
        down(False)
        clock.advance(timedelta(seconds=1))
        r = client.get("/metrics", headers=bearer(toks["admin"]))
        assert r.status_code == 200 and 'callbackd_check_up{check="database"} 1.0' in r.text


def test_check_up_has_a_sample_without_links(store: Store, clock: FakeClock) -> None:
    svc = services(store, clock, Settings.model_validate({"console": {"metrics_public": True}}))
    with TestClient(app(svc)) as client:
        text = client.get("/metrics").text
    assert 'callbackd_check_up{check="database"} 1.0' in text
    assert "callbackd_leader" not in text  # no daemon, no leadership to report
