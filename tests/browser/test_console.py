"""The console in real headless Chromium against the real HTTP server (uvicorn on port 0):
an operator logs in, claims the next callback, marks it reached and sees it leave the due list;
an admin opens the heatmap and the reports page. Screenshots go to test-artifacts/."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from console_support import seed, services, tokens

from callback_queue.clock import FakeClock
from callback_queue.store import Store
from daemon.http import api, console, metrics
from daemon.http.app import HttpServer, create_app

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("CALLBACKD_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def chromium() -> Iterator[Any]:
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture
def site(tmp_path: Path, clock: FakeClock) -> Iterator[dict[str, Any]]:
    store = Store(f"sqlite:///{tmp_path / 'callbackd.db'}")
    store.upgrade()
    ids = seed(store, clock, 6)
    toks = tokens(store, clock)
    server = HttpServer(create_app(services(store, clock), [api.api_routes, console.console_routes,
                                                            metrics.metrics_routes]), "127.0.0.1", 0)
    server.start()
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        yield {"base": f"http://127.0.0.1:{server.port}", "ids": ids, "tokens": toks, "store": store,
               "clock": clock}
    finally:
        server.stop()
        store.dispose()


def _login(page: Any, base: str, name: str, token: str, then: str = "/console/") -> None:
    page.goto(base + then)
    assert "/console/login" in page.url  # not logged in: sent to the login page
    page.fill("input[name=name]", name)
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(re.escape(base + then) + r"$"))


def test_operator_claims_next_marks_reached_and_it_leaves_the_due_list(site: dict[str, Any], chromium: Any) -> None:
    base, ids = site["base"], site["ids"]
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    _login(page, base, "otto", site["tokens"]["operator"])
    due_ids = [int(x) for x in page.locator("#due tbody tr").evaluate_all("rows => rows.map(r => r.dataset.id)")]
    assert due_ids == ids
    numbers = page.locator("#due td.number").all_inner_texts()
    assert all("****" in n for n in numbers)  # masked until claimed
    page.screenshot(path=str(ARTIFACTS / "console-operator-due-list.png"), full_page=True)

    page.click("#claim-next")
    page.wait_for_url(re.compile(rf"/console/callbacks/{ids[0]}$"))
    assert page.inner_text("#number") == "+8613800000000"  # the claimer sees the number
    assert page.locator(".timeline li.tl-attempt").count() == 3
    page.fill("textarea[name=note]", "called back, question answered")
    page.screenshot(path=str(ARTIFACTS / "console-operator-claimed.png"), full_page=True)
    page.click("button.outcome-reached")

    page.wait_for_url(re.compile(r"/console/\?notice="))
    assert f"Callback {ids[0]}: reached." in page.inner_text("p.notice")
    left = [int(x) for x in page.locator("#due tbody tr").evaluate_all("rows => rows.map(r => r.dataset.id)")]
    assert left == ids[1:] and ids[0] not in left
    assert page.locator("#mine").count() == 0
    page.screenshot(path=str(ARTIFACTS / "console-operator-after-reached.png"), full_page=True)

    # the timeline now shows the call and the note
    page.goto(f"{base}/console/callbacks/{ids[0]}")
    text = page.inner_text(".timeline")
    assert "closed" in text and "called back, question answered" in text and "reached" in text
    # operators do not get admin pages
    resp = page.goto(f"{base}/console/admin")
    assert resp is not None and resp.status == 403


def test_admin_opens_the_heatmap_and_the_reports(site: dict[str, Any], chromium: Any) -> None:
    base = site["base"]
    page = chromium.new_page(viewport={"width": 1280, "height": 1000})
    _login(page, base, "ada", site["tokens"]["admin"], then="/console/admin")
    cells = page.locator("#heatmap svg rect[data-day]")
    assert cells.count() == 7 * 24
    busy = page.locator("#heatmap svg rect[data-day] title").evaluate_all("els => els.map(e => e.textContent)")
    assert sum(int(re.search(r"— (\d+) calls", t).group(1)) for t in busy) == 18  # type: ignore[union-attr]
    assert "No [schedule] is configured" in page.inner_text("#windows-pending")
    assert page.inner_text("#sla").split()[-5:] == ["6", "0", "0", "6", "0"]

    # with off-peak windows configured, the heatmap outlines them and the plan shows each window's load
    from daemon.settings import Settings

    planned = Settings.model_validate({"daemon": {"timezone": "Asia/Shanghai"}, "schedule": {
        "workday": ["12:00-13:30", "18:30-20:30"], "restday": ["10:00-12:00"], "capacity": {"fixed": 4}}})
    server = HttpServer(create_app(services(site["store"], site["clock"], planned),
                                   [api.api_routes, console.console_routes]), "127.0.0.1", 0)
    server.start()
    try:
        base2 = f"http://127.0.0.1:{server.port}"
        page.goto(base2 + "/console/admin")   # cookies are per host, not port: the session carries over
        assert page.locator("#heatmap svg rect.window").count() >= 7   # at least one outline per day
        rows = page.locator("#windows tr").all_inner_texts()
        assert any("12:00-13:30" in r for r in rows)
        assert sum(int(r.split("\t")[2]) for r in rows[1:]) == 6        # the six open callbacks are planned
        page.screenshot(path=str(ARTIFACTS / "console-admin-heatmap.png"), full_page=True)
    finally:
        server.stop()
    page.goto(base + "/console/admin")

    page.click("nav >> text=Reports")
    page.wait_for_url(re.compile(r"/console/reports$"))
    assert page.locator("svg.bars").count() == 2
    total = page.locator("#report tfoot th").all_inner_texts()
    assert total[0] == "total" and total[1] == "6"  # six callers flagged
    page.screenshot(path=str(ARTIFACTS / "console-admin-reports.png"), full_page=True)
    csv_href = page.get_attribute("#csv", "href")
    assert csv_href
    r = page.request.get(base + csv_href)
    assert r.ok and r.headers["content-type"].startswith("text/csv")
    assert r.text().splitlines()[0].startswith("period,start,flagged,")
