"""The API's short-lived cache of bearer-token lookups ([console] token_cache): a client's requests
cost one lookup per period; a user disabled in this process loses access at once, one disabled
behind the daemon's back (another process) within the period; 0s turns the cache off."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from console_support import app, bearer, services, tokens
from starlette.testclient import TestClient

from callback_queue import schema as t
from callback_queue.clock import FakeClock
from callback_queue.store import Store
from callback_queue.users import Users
from daemon.http.auth import TokenCache
from daemon.settings import Settings


class Ticks:
    """A monotonic time the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _disable_behind_the_back(store: Store, name: str) -> None:
    """What `callbackd users disable` does from another process: the daemon's process is not told."""
    now = datetime.now(UTC)
    with store.write() as conn:
        uid = conn.execute(sa.select(t.users.c.id).where(t.users.c.name == name)).scalar_one()
        conn.execute(sa.update(t.users).where(t.users.c.id == uid).values(disabled_at=now))
        conn.execute(sa.update(t.api_tokens).where(t.api_tokens.c.user_id == uid).values(revoked_at=now))


def _lookups(store: Store) -> list[str]:
    """Count the token lookups the app makes (the SELECTs that join api_tokens)."""
    seen: list[str] = []

    @sa.event.listens_for(store.engine, "before_cursor_execute")
    def _spy(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        if "api_tokens" in statement and statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    return seen


@pytest.fixture
def ticks() -> Ticks:
    return Ticks()


def _client(store: Store, clock: FakeClock, ticks: Ticks, ttl: str) -> Iterator[TestClient]:
    svc = services(store, clock, Settings.model_validate({"console": {"token_cache": ttl}}))
    svc.extra["token_cache"] = TokenCache(monotonic=ticks)
    with TestClient(app(svc)) as c:
        yield c


def test_a_token_is_looked_up_once_per_period(store: Store, clock: FakeClock, ticks: Ticks) -> None:
    toks = tokens(store, clock)
    lookups = _lookups(store)
    for client in _client(store, clock, ticks, "5s"):
        for _ in range(5):
            assert client.get("/api/me", headers=bearer(toks["operator"])).json()["name"] == "otto"
        assert len(lookups) == 1
        assert client.get("/api/me", headers=bearer(toks["admin"])).json()["name"] == "ada"
        assert len(lookups) == 2  # per token
        ticks.now += 5.0
        assert client.get("/api/me", headers=bearer(toks["operator"])).status_code == 200
        assert len(lookups) == 3  # the period ran out: looked up again
        # an unknown token is never cached: each try is refused by a lookup
        for _ in range(2):
            assert client.get("/api/me", headers=bearer("cbd_unknown")).status_code == 401
        assert len(lookups) == 5


def test_disabled_here_at_once_elsewhere_within_the_period(store: Store, clock: FakeClock, ticks: Ticks) -> None:
    toks = tokens(store, clock)
    for client in _client(store, clock, ticks, "5s"):
        for who in ("operator", "operator2", "admin"):
            assert client.get("/api/me", headers=bearer(toks[who])).status_code == 200
        # disabled by another process: still served from the cache until the period runs out ...
        _disable_behind_the_back(store, "olga")
        ticks.now += 4.9
        assert client.get("/api/me", headers=bearer(toks["operator2"])).status_code == 200
        ticks.now += 0.1
        r = client.get("/api/me", headers=bearer(toks["operator2"]))
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        # ... the others were not disturbed (and are cached afresh now)
        assert client.get("/api/me", headers=bearer(toks["admin"])).json()["name"] == "ada"
        assert client.get("/api/me", headers=bearer(toks["operator"])).json()["name"] == "otto"
        # disabled through Users in the daemon's process: refused at once, cached or not
        Users(store, clock).disable("otto")
        assert client.get("/api/me", headers=bearer(toks["operator"])).status_code == 401
        assert client.get("/api/me", headers=bearer(toks["admin"])).status_code == 200


def test_zero_turns_the_cache_off(store: Store, clock: FakeClock, ticks: Ticks) -> None:
    toks = tokens(store, clock)
    lookups = _lookups(store)
    for client in _client(store, clock, ticks, "0s"):
        for _ in range(3):
            assert client.get("/api/me", headers=bearer(toks["operator2"])).status_code == 200
        assert len(lookups) == 3
        _disable_behind_the_back(store, "olga")
        assert client.get("/api/me", headers=bearer(toks["operator2"])).status_code == 401


def test_the_cache_stays_bounded(ticks: Ticks) -> None:
    from callback_queue import users

    cache = TokenCache(max_entries=3, monotonic=ticks)
    who = Users.__new__(Users)  # any object stands for a user here
    for i in range(3):
        cache.put(f"k{i}", who, 10, users.revocations)  # type: ignore[arg-type]
    ticks.now += 11  # all three ran out: the next put makes room by dropping them
    cache.put("k3", who, 10, users.revocations)  # type: ignore[arg-type]
    assert len(cache._entries) == 1 and cache.get("k3") is who
    for i in range(4, 7):
        cache.put(f"k{i}", who, 10, users.revocations)  # type: ignore[arg-type]
    assert len(cache._entries) <= 3
    # a lookup that started before a user was disabled is not cached
    cache.put("late", who, 10, users.revocations - 1)  # type: ignore[arg-type]
    assert cache.get("late") is None
