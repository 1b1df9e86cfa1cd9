"""GET /api/schedule/preview: the same plan as `callbackd schedule preview`, for admins only."""

from __future__ import annotations

from console_support import app, bearer, seed, services, tokens
from starlette.testclient import TestClient

from callback_queue.clock import FakeClock
from callback_queue.store import Store
from daemon.settings import Settings


def test_preview_over_the_api(store: Store, clock: FakeClock) -> None:
    toks = tokens(store, clock)
    seed(store, clock, 5)
    s = Settings.model_validate({"daemon": {"timezone": "Asia/Shanghai"},
                                 "schedule": {"workday": ["12:00-13:00"], "restday": ["12:00-13:00"],
                                              "capacity": {"fixed": 3}, "quiet_hours": []}})
    with TestClient(app(services(store, clock, s))) as client:
        r = client.get("/api/schedule/preview?days=3", headers=bearer(toks["admin"]))
        assert r.status_code == 200, r.text
        data = r.json()
        planned = sum(w["planned"] for d in data["days"] for w in d["windows"])
        assert data["open_callbacks"] == 5 and planned == 5      # 3 today, 2 tomorrow
        assert data["days"][0]["windows"][0] == {**data["days"][0]["windows"][0], "window": "12:00-13:00",
                                                  "capacity": 3}
        assert set(data["heatmap"]["windows"]) == {"mon", "tue", "wed", "thu", "fri", "sat", "sun"}
        assert 12 in data["heatmap"]["windows"]["mon"]
        assert client.get("/api/schedule/preview", headers=bearer(toks["operator"])).status_code == 403
        assert client.get("/api/schedule/preview?days=0", headers=bearer(toks["admin"])).status_code in (400, 422)
    with TestClient(app(services(store, clock, Settings()))) as client:
        r = client.get("/api/schedule/preview", headers=bearer(toks["admin"]))
        assert r.status_code == 409 and "no [schedule]" in r.json()["error"]["message"]


def test_a_window_to_midnight_reads_24_00(store: Store, clock: FakeClock) -> None:
    from daemon.schedule_preview import build

    s = Settings.model_validate({"daemon": {"timezone": "Asia/Shanghai"},
                                 "schedule": {"workday": ["18:00-24:00"], "restday": ["00:00-24:00"],
                                              "holiday": ["00:00-24:00"], "capacity": {"fixed": 3},
                                              "quiet_hours": []}})
    labels = {w["window"] for d in build(s, store, clock.now(), days=7)["days"] for w in d["windows"]}
    assert labels == {"18:00-24:00", "00:00-24:00"}


def test_preview_from_a_start_day_far_ahead(store: Store, clock: FakeClock) -> None:
    """An admin checks the Spring Festival ahead of time, as `schedule preview --from` does."""
    toks = tokens(store, clock)
    s = Settings.model_validate({"daemon": {"timezone": "Asia/Shanghai"},
                                 "schedule": {"workday": ["12:00-13:00"], "restday": ["12:00-13:00"],
                                              "holiday": [], "capacity": {"fixed": 3}, "quiet_hours": []}})
    with TestClient(app(services(store, clock, s))) as client:
        r = client.get("/api/schedule/preview?start=2026-02-14&days=10", headers=bearer(toks["admin"]))
        assert r.status_code == 200, r.text
        days = {d["date"]: d for d in r.json()["days"]}
        assert len(days) == 10 and min(days) == "2026-02-14"
        assert days["2026-02-14"]["type"] == "workday"                       # a worked Saturday (调休)
        assert all(days[f"2026-02-{n}"]["type"] == "holiday" and days[f"2026-02-{n}"]["windows"] == []
                   for n in range(15, 24))                                   # the whole break, weekends too
        assert client.get("/api/schedule/preview?days=400", headers=bearer(toks["admin"])).status_code == 200
        assert client.get("/api/schedule/preview?days=401", headers=bearer(toks["admin"])).status_code == 400
        assert client.get("/api/schedule/preview?start=2026-13-01", headers=bearer(toks["admin"])).status_code == 400
