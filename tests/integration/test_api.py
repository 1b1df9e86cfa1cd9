"""The HTTP API in-process (Starlette TestClient) on SQLite and PostgreSQL: a thin layer over the queue."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from console_support import app, bearer, seed, services, tokens
from starlette.testclient import TestClient

from callback_queue.clock import FakeClock
from callback_queue.store import Store
from daemon.http.api import OPS
from daemon.settings import Settings


@pytest.fixture
def env(store: Store, clock: FakeClock) -> Iterator[tuple[TestClient, dict[str, dict[str, str]], list[int]]]:
    ids = seed(store, clock, 5)
    toks = tokens(store, clock)
    with TestClient(app(services(store, clock))) as client:
        yield client, {k: bearer(v) for k, v in toks.items()}, ids


def test_list_masks_numbers_and_pages(env) -> None:
    client, h, ids = env
    r = client.get("/api/callbacks", params={"due": "true", "limit": 2}, headers=h["operator"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert [c["id"] for c in body["items"]] == ids[:2] and body["next_offset"] == 2
    assert all("****" in c["number"] for c in body["items"])
    r = client.get("/api/callbacks", params={"due": "true", "limit": 2, "offset": 4}, headers=h["operator"])
    assert [c["id"] for c in r.json()["items"]] == ids[4:] and r.json()["next_offset"] is None
    # admins see numbers in full; filters combine
    r = client.get("/api/callbacks", params={"state": "open", "number": "+8613800000003"}, headers=h["admin"])
    assert [c["number"] for c in r.json()["items"]] == ["+8613800000003"]
    r = client.get("/api/callbacks", params=[("state", "reached"), ("state", "cancelled")], headers=h["admin"])
    assert r.json()["items"] == []


def test_claim_close_reached_leaves_the_due_list(env, clock: FakeClock) -> None:
    client, h, ids = env
    r = client.post("/api/callbacks/claim", json={}, headers=h["operator"])
    assert r.status_code == 200, r.text
    (got,) = r.json()["items"]
    assert got["id"] == ids[0] and got["state"] == "dialing" and got["claimed_by"] == "otto"
    assert got["number"] == "+8613800000000"  # the claimer sees the full number
    # someone else sees it masked and cannot close it
    other = client.get(f"/api/callbacks/{got['id']}", headers=h["operator2"]).json()
    assert "****" in other["callback"]["number"]
    r = client.post(f"/api/callbacks/{got['id']}/close", json={"outcome": "reached"}, headers=h["operator2"])
    assert r.status_code == 409 and r.json()["error"]["code"] == "claimed_by_someone_else"
    r = client.post(f"/api/callbacks/{got['id']}/close", json={"outcome": "reached", "note": "spoke to her"},
                    headers=h["operator"])
    assert r.status_code == 200 and r.json()["state"] == "reached"
    due = client.get("/api/callbacks", params={"due": "true"}, headers=h["operator"]).json()["items"]
    assert got["id"] not in [c["id"] for c in due] and len(due) == 4
    show = client.get(f"/api/callbacks/{got['id']}", headers=h["operator"]).json()
    kinds = [(i["kind"], i["title"]) for i in show["timeline"]]
    assert kinds[:3] == [("attempt", "inbound call failed (abandon)")] * 3
    assert ("event", "claimed") in kinds and ("event", "closed") in kinds
    closed = next(i for i in show["timeline"] if i["title"] == "closed")
    assert closed["detail"]["note"] == "spoke to her" and closed["actor"] == "otto"


def test_claim_one_release_cancel_and_conflicts(env) -> None:
    client, h, ids = env
    cid = ids[3]
    r = client.post(f"/api/callbacks/{cid}/claim", headers=h["operator"])
    assert r.status_code == 200 and r.json()["claimed_by"] == "otto"
    r = client.post(f"/api/callbacks/{cid}/claim", headers=h["operator2"])
    assert r.status_code == 409 and "claimed by otto" in r.json()["error"]["message"]
    # force is for admins only
    r = client.post(f"/api/callbacks/{cid}/release", json={"force": True}, headers=h["operator2"])
    assert r.status_code == 403
    r = client.post(f"/api/callbacks/{cid}/release", json={"force": True, "note": "shift over"}, headers=h["admin"])
    assert r.status_code == 200 and r.json()["state"] == "pending"
    r = client.post(f"/api/callbacks/{cid}/cancel", json={"reason": "asked us not to"}, headers=h["operator"])
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    r = client.post(f"/api/callbacks/{cid}/cancel", json={"reason": "again"}, headers=h["operator"])
    assert r.status_code == 409 and r.json()["error"]["code"] == "invalid_transition"
    r = client.post(f"/api/callbacks/{cid}/claim", headers=h["operator"])
    assert r.status_code == 409 and "cancelled" in r.json()["error"]["message"]


def test_claim_next_when_nothing_is_due(store: Store, clock: FakeClock) -> None:
    toks = tokens(store, clock)
    with TestClient(app(services(store, clock))) as client:
        r = client.post("/api/callbacks/claim", json={"count": 3}, headers=bearer(toks["operator"]))
        assert r.status_code == 200 and r.json() == {"items": []}


def test_followups_and_do_not_contact(env) -> None:
    client, h, _ = env
    body = {"number": "+8613911112222", "request_id": "WO-2026-0001"}
    assert client.post("/api/followups", json=body, headers=h["operator"]).status_code == 403
    r = client.post("/api/followups", json=body, headers=h["admin"])
    assert r.status_code == 201, r.text
    f = r.json()
    assert f["kind"] == "followup" and f["request_id"] == "WO-2026-0001" and f["state"] == "pending"
    r = client.post("/api/followups", json=body, headers=h["admin"])
    assert r.status_code == 409 and "already has follow-up" in r.json()["error"]["message"]
    listed = client.get("/api/followups", headers=h["operator"]).json()["items"]
    assert [x["id"] for x in listed] == [f["id"]]
    # listing the number cancels its open follow-up
    r = client.post("/api/do-not-contact", json={"number": "+8613911112222", "reason": "STOP"}, headers=h["admin"])
    assert r.status_code == 200 and r.json()["cancelled_callbacks"] == [f["id"]]
    dnc = client.get("/api/do-not-contact", headers=h["admin"]).json()["items"]
    assert [(d["number"], d["source"]) for d in dnc] == [("+8613911112222", "operator")]
    assert client.delete("/api/do-not-contact/+8613911112222", headers=h["admin"]).status_code == 200
    assert client.delete("/api/do-not-contact/+8613911112222", headers=h["admin"]).status_code == 404


def test_errors_are_json_with_clear_messages(env) -> None:
    client, h, _ = env
    op = h["operator"]
    cases = [
        (client.get("/api/callbacks/999999", headers=op), 404, "not_found", "no callback 999999"),
        (client.get("/api/callbacks", params={"limit": 0}, headers=op), 400, "bad_request", "invalid query"),
        (client.get("/api/callbacks", params={"colour": "red"}, headers=op), 400, "bad_request", "colour"),
        (client.post("/api/callbacks/1/close", json={"outcome": "maybe"}, headers=op), 422, "invalid_body", "valid"),
        (client.post("/api/callbacks/1/close", content=b"{nope", headers=op), 400, "bad_request", "not JSON"),
        (client.post("/api/callbacks/1/close", json=[1], headers=op), 422, "invalid_body", "JSON object"),
        (client.get("/api/nowhere", headers=op), 404, "not_found", "/api/nowhere"),
        (client.get("/api/callbacks/abc", headers=op), 404, "not_found", "no API route"),
        (client.delete("/api/callbacks", headers=op), 405, "method_not_allowed", "DELETE"),
        (client.get(f"/api/callbacks/{2**70}", headers=op), 404, "not_found", "no callback"),
    ]
    for r, status, code, text in cases:
        assert r.status_code == status, (r.request.url, r.text)
        err = r.json()["error"]
        assert err["code"] == code and text in err["message"] + str(err.get("details", "")), err
    bad = client.post("/api/callbacks/1/close", json={"outcome": "maybe"}, headers=op).json()["error"]
    assert bad["details"][0]["field"] == "outcome"


def test_openapi_describes_every_route(env) -> None:
    client, h, _ = env
    assert client.get("/openapi.json").status_code == 401
    doc = client.get("/openapi.json", headers=h["operator"]).json()
    assert doc["openapi"].startswith("3.1")
    ops = {(m.upper(), p) for p, item in doc["paths"].items() for m in item}
    assert ops == {(o.method, o.path.replace(":int", "")) for o in OPS}
    close = doc["paths"]["/api/callbacks/{callback_id}/close"]["post"]
    assert close["requestBody"]["content"]["application/json"]["schema"]["required"] == ["outcome"]
    assert doc["paths"]["/api/reports"]["get"]["responses"]["403"]


def test_config_view_redacts_secrets(store_url: str, clock: FakeClock) -> None:
    store = Store(store_url)
    try:
        s = Settings.model_validate({"store": {"url": "postgresql+psycopg://cb:s3cret-pw@db.example/callbackd"}})
        toks = tokens(store, clock)
        with TestClient(app(services(store, clock, s))) as client:
            r = client.get("/api/config", headers=bearer(toks["admin"]))
            assert r.status_code == 200
            assert "s3cret-pw" not in r.text and r.json()["store"]["url"].startswith("postgresql+psycopg://cb:***@")
            assert client.get("/api/config", headers=bearer(toks["operator"])).status_code == 403
    finally:
        store.dispose()


def test_metrics_from_the_database(env, store: Store, clock: FakeClock) -> None:
    client, h, ids = env
    assert client.get("/metrics").status_code == 401
    client.post("/api/callbacks/claim", json={}, headers=h["operator"])
    client.post(f"/api/callbacks/{ids[0]}/close", json={"outcome": "busy"}, headers=h["operator"])
    text = client.get("/metrics", headers=h["operator"]).text
    assert 'callbackd_callbacks{kind="recall",state="retry_wait"} 1.0' in text
    assert 'callbackd_callbacks{kind="recall",state="pending"} 4.0' in text
    assert 'callbackd_attempts_24h{outcome="failed",reason="abandon"} 15.0' in text
    assert 'callbackd_dial_outcomes_24h{outcome="busy"} 1.0' in text
    assert "callbackd_callbacks_due 4.0" in text
    assert "callbackd_planner_sla_breaches 0.0" in text
    assert client.get("/healthz").status_code == 200  # health stays public
    clock.advance(timedelta(seconds=1))
