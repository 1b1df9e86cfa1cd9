"""Users and auth: 401 without credentials, 403 for operators on admin routes, no secret stored in
clear, CSRF on every console form, sessions that end."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from console_support import app, bearer, seed, services, tokens
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from callback_queue import schema as t
from callback_queue.clock import FakeClock
from callback_queue.store import Store
from callback_queue.users import Role, Users, digest
from daemon.http.api import OPS
from daemon.http.auth import SESSION_COOKIE

PUBLIC = {"/healthz", "/readyz", "/", "/console", "/console/login"}


def _concrete(path: str) -> str:
    return re.sub(r"{\w+(:\w+)?}", lambda m: "1" if m.group(1) == ":int" else "+8613800000000", path)


@pytest.fixture
def client(store: Store, clock: FakeClock) -> Iterator[TestClient]:
    seed(store, clock, 2)
    with TestClient(app(services(store, clock)), follow_redirects=False) as c:
        yield c


def login(client: TestClient, name: str, token: str) -> str:
    page = client.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    r = client.post("/console/login", data={"name": name, "token": token, "csrf": csrf, "next": "/console/"})
    assert r.status_code == 303 and r.headers["location"] == "/console/", r.text
    return client.cookies[SESSION_COOKIE]


def form_csrf(client: TestClient, path: str = "/console/") -> str:
    return re.search(r'name="csrf" value="([^"]+)"', client.get(path).text).group(1)  # type: ignore[union-attr]


def test_every_api_route_needs_a_token(client: TestClient, store: Store, clock: FakeClock) -> None:
    routes = [(op.method, _concrete(op.path)) for op in OPS] + [("GET", "/openapi.json"), ("GET", "/metrics"),
                                                                 ("GET", "/api/anything")]
    for method, path in routes:
        for headers in ({}, {"Authorization": "Bearer cbd_not-a-token"}, {"Authorization": "Basic YTpi"}):
            r = client.request(method, path, headers=headers, json={})
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.json()["error"]["code"] == "unauthorized"
            assert r.headers["www-authenticate"].startswith("Bearer")
    # a disabled user's token stops working at once
    toks = tokens(store, clock)
    assert client.get("/api/me", headers=bearer(toks["operator"])).json() == {"name": "otto", "role": "operator"}
    Users(store, clock).disable("otto")
    assert client.get("/api/me", headers=bearer(toks["operator"])).status_code == 401


def test_operators_get_403_on_admin_routes(client: TestClient, store: Store, clock: FakeClock) -> None:
    toks = tokens(store, clock)
    admin_ops = [op for op in OPS if op.role is Role.ADMIN]
    assert len(admin_ops) >= 6
    for op in admin_ops:
        r = client.request(op.method, _concrete(op.path), headers=bearer(toks["operator"]), json={})
        assert r.status_code == 403, (op.path, r.text)
        assert "needs an admin" in r.json()["error"]["message"]
        r = client.request(op.method, _concrete(op.path), headers=bearer(toks["admin"]), json={})
        assert r.status_code != 403, op.path
    login(client, "otto", toks["operator"])
    for path in ("/console/admin", "/console/reports", "/console/reports.csv"):
        assert client.get(path).status_code == 403


def test_every_console_page_needs_a_session(client: TestClient) -> None:
    paths = []
    for route in app_routes(client):
        if isinstance(route, Route) and route.path.startswith("/console") and route.path not in PUBLIC:
            paths += [(m, _concrete(route.path)) for m in route.methods or () if m != "HEAD"]
    assert len(paths) >= 11
    for method, path in paths:
        r = client.request(method, path)
        if method == "GET":
            assert r.status_code == 303 and r.headers["location"].startswith("/console/login?next="), path
        else:
            assert r.status_code == 401, (method, path)
    assert client.get("/healthz").status_code == 200


def app_routes(client: TestClient) -> list:
    out = []
    for r in client.app.routes:  # type: ignore[attr-defined]
        if not isinstance(r, Mount):
            out.append(r)
    return out


def test_tokens_and_sessions_are_not_stored_in_clear(client: TestClient, store: Store, clock: FakeClock) -> None:
    toks = tokens(store, clock)
    session = login(client, "ada", toks["admin"])
    secrets_ = [*toks.values(), session]
    with store.read() as conn:
        dump = "\n".join(repr(tuple(row)) for table in (t.users, t.api_tokens, t.user_sessions)
                         for row in conn.execute(sa.select(table)))
        hashes = set(conn.execute(sa.select(t.api_tokens.c.token_hash)).scalars())
        sessions = set(conn.execute(sa.select(t.user_sessions.c.session_hash)).scalars())
    for s in secrets_:
        assert s not in dump and s[4:] not in dump and s[:20] not in dump
    assert hashes == {digest(v) for v in toks.values()} and sessions == {digest(session)}
    assert len(session) >= 40 and all(len(v) >= 44 for v in toks.values())  # >= 256 bits


def test_csrf_is_enforced_on_console_forms(client: TestClient, store: Store, clock: FakeClock) -> None:
    toks = tokens(store, clock)
    # the login form itself: no CSRF cookie / wrong token -> 403
    fresh = client.get("/console/login")
    assert fresh.status_code == 200
    r = client.post("/console/login", data={"name": "otto", "token": toks["operator"], "csrf": "forged"})
    assert r.status_code == 403 and SESSION_COOKIE not in client.cookies
    login(client, "otto", toks["operator"])
    good = form_csrf(client)
    for data in ({}, {"csrf": ""}, {"csrf": "0" * 40}, {"csrf": form_csrf_of_other_session(store, clock)}):
        r = client.post("/console/claim", data=data)
        assert r.status_code == 403 and "security token" in r.text, data
        r = client.post("/console/logout", data=data)
        assert r.status_code == 403
    with store.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(t.callback_events)
                            .where(t.callback_events.c.event == "claimed")).scalar_one() == 0
    r = client.post("/console/claim", data={"csrf": good})
    assert r.status_code == 303 and r.headers["location"].startswith("/console/callbacks/")
    # the session cookie is HttpOnly and SameSite
    set_cookie = _login_response(store, clock, toks["admin"]).headers["set-cookie"]
    assert "httponly" in set_cookie.lower() and "samesite=lax" in set_cookie.lower()
    # logging out ends the session on the server
    client.post("/console/logout", data={"csrf": good})
    assert client.get("/console/").status_code == 303


def form_csrf_of_other_session(store: Store, clock: FakeClock) -> str:
    from callback_queue.users import csrf_token

    got = Users(store, clock).login("ada", Users(store, clock).new_token("ada"), timedelta(hours=1))
    assert got is not None
    return csrf_token(got[1])


def _login_response(store: Store, clock: FakeClock, token: str):  # type: ignore[no-untyped-def]
    with TestClient(app(services(store, clock)), follow_redirects=False) as c:
        page = c.get("/console/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        return c.post("/console/login", data={"name": "ada", "token": token, "csrf": csrf})


def test_sessions_expire_and_bad_logins_fail(client: TestClient, store: Store, clock: FakeClock) -> None:
    toks = tokens(store, clock)
    page = client.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    # another user's token does not log you in
    r = client.post("/console/login", data={"name": "otto", "token": toks["admin"], "csrf": csrf})
    assert r.status_code == 303 and "error=" in r.headers["location"] and SESSION_COOKIE not in client.cookies
    login(client, "otto", toks["operator"])
    assert client.get("/console/").status_code == 200
    clock.advance(timedelta(hours=12, seconds=1))  # [console] session_lifetime
    assert client.get("/console/").status_code == 303
    # open redirects are refused
    page = client.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    r = client.post("/console/login", data={"name": "otto", "token": toks["operator"], "csrf": csrf,
                                            "next": "//evil.example/"})
    assert r.headers["location"] == "/console/"


def test_users_cli(tmp_path, store_url: str) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from daemon.cli import cli

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[store]\nurl = "{store_url}"\n')
    run = CliRunner()
    r = run.invoke(cli, ["users", "add", "alice", "--role", "admin", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    token = r.stdout.strip().splitlines()[-1]
    assert token.startswith("cbd_")
    r = run.invoke(cli, ["users", "add", "alice", "--role", "operator", "--config", str(cfg)])
    assert r.exit_code == 1 and "exists already" in r.output
    r = run.invoke(cli, ["users", "list", "--format", "csv", "--config", str(cfg)])
    assert "alice,admin" in r.output and token not in r.output
    store = Store(store_url)
    try:
        from callback_queue.clock import SystemClock

        assert Users(store, SystemClock()).by_token(token).name == "alice"  # type: ignore[union-attr]
        r = run.invoke(cli, ["users", "disable", "alice", "--config", str(cfg)])
        assert r.exit_code == 0
        assert Users(store, SystemClock()).by_token(token) is None
    finally:
        store.dispose()
