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


# -- local times, charts that fit, no console errors ------------------------------------------------------
@pytest.fixture
def month_site(tmp_path: Path, clock: FakeClock) -> Iterator[dict[str, Any]]:
    """Callers flagged on ten days of the last month (a 30-day report), one callback claimed by otto."""
    from datetime import timedelta

    from console_support import RULES, failures

    from callback_queue.ingest import Ingestor
    from callback_queue.queue import CallbackQueue

    store = Store(f"sqlite:///{tmp_path / 'callbackd.db'}")
    store.upgrade()
    now, first = clock.now(), 0
    for d in range(27, -1, -3):  # flagged on the day they called: 10 days with 1-4 callers each
        clock.set(now - timedelta(days=d, hours=3))
        batch = [a for i in range(1 + d % 4) for a in failures(f"+86139{d:02d}{i:06d}", clock.now()
                                                               - timedelta(minutes=5))]
        first = Ingestor(store, clock, RULES).ingest(batch).opened[0]
    clock.set(now)
    toks = tokens(store, clock)
    CallbackQueue(store, clock).claim_one(first, "otto")  # one of today's
    server = HttpServer(create_app(services(store, clock), [api.api_routes, console.console_routes]), "127.0.0.1", 0)
    server.start()
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        yield {"base": f"http://127.0.0.1:{server.port}", "tokens": toks, "claimed": first, "store": store}
    finally:
        server.stop()
        store.dispose()


def _problems(page: Any) -> list[str]:
    """Every console error, page error, failed request and 4xx/5xx response the page gets from now on."""
    seen: list[str] = []
    page.on("console", lambda m: seen.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: seen.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: seen.append(f"failed: {r.url}"))
    page.on("response", lambda r: seen.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    return seen


def test_times_are_local_and_the_pages_load_cleanly(month_site: dict[str, Any], chromium: Any) -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    base, cid = month_site["base"], month_site["claimed"]
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    problems = _problems(page)
    _login(page, base, "otto", month_site["tokens"]["operator"])
    page.goto(f"{base}/console/callbacks/{cid}")
    assert page.inner_text("#tz") == "times in Asia/Shanghai"
    times = page.locator(".timeline time").evaluate_all("els => els.map(e => [e.dateTime, e.textContent])")
    assert len(times) == 5  # three failed calls, opened, claimed
    for iso, shown in times:
        assert shown == datetime.fromisoformat(iso).astimezone(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m-%d %H:%M:%S")
    timeline_text = page.inner_text(".timeline")
    assert "UTC" not in timeline_text and "+00:00" not in timeline_text
    assert page.inner_text("body").count("Asia/Shanghai") == 1
    page.screenshot(path=str(ARTIFACTS / "console-callback-local-times.png"), full_page=True)
    page.goto(f"{base}/console/")
    assert problems == []  # no failed stylesheet, no script error
    # the icon is in the page (Chromium asks for /favicon.ico only when there is none; Playwright does not
    # see that request): it decodes as a 16 x 16 image
    size = page.evaluate("""async () => { const img = new Image();
        img.src = document.querySelector('link[rel=icon]').href; await img.decode();
        return [img.naturalWidth, img.naturalHeight]; }""")
    assert size == [16, 16]
    page.goto(f"{base}/console/callbacks/abc")  # the console's own 404 page: styled, with its way back
    assert page.inner_text("h1") == "Not found" and page.inner_text("#back") == "Back to the due list"
    assert page.locator("header nav").is_visible()
    assert page.locator("main").evaluate("m => getComputedStyle(m).maxWidth") == "1100px"  # console.css applies
    assert problems == [f"404 {base}/console/callbacks/abc", "console error: Failed to load resource: "  # no more
                        "the server responded with a status of 404 (Not Found)"]
    page.screenshot(path=str(ARTIFACTS / "console-not-found.png"), full_page=True)


def _chart_boxes(page: Any) -> list[dict[str, float]]:
    return page.locator("svg.bars").evaluate_all("""svgs => svgs.map(s => {
        const r = s.getBoundingClientRect(), fig = s.parentElement;
        const labels = [...s.querySelectorAll('text[data-period]')];
        const last = labels[labels.length - 1].getBoundingClientRect();
        const bars = [...s.querySelectorAll('rect[fill] title')].map(t => t.parentElement.getBoundingClientRect());
        return {left: r.left, right: r.right, width: r.width, last_label_right: last.right,
                last_label: labels[labels.length - 1].textContent, labels: labels.length,
                bars_right: Math.max(...bars.map(b => b.right)), fig_scroll: fig.scrollWidth - fig.clientWidth,
                view: window.innerWidth};
    })""")


@pytest.mark.parametrize("width", [1280, 700])
def test_both_report_charts_fit_the_page(month_site: dict[str, Any], chromium: Any, width: int) -> None:
    base = month_site["base"]
    page = chromium.new_page(viewport={"width": width, "height": 1000})
    problems = _problems(page)
    _login(page, base, "ada", month_site["tokens"]["admin"], then="/console/reports")
    assert problems == []
    reach, rating = _chart_boxes(page)
    assert abs(reach["width"] - rating["width"]) < 0.5 and abs(reach["left"] - rating["left"]) < 0.5
    for box in (reach, rating):
        assert box["right"] <= box["view"] and box["fig_scroll"] <= 0, box   # nothing clipped or scrolled away
        assert box["bars_right"] <= box["right"] and box["last_label_right"] <= box["right"] + 0.5, box
        assert box["last_label"] == "11-27" and box["labels"] >= 10, box   # the last day is labelled
    # the period column does not wrap: each period's text is on one line
    lines = page.locator("#report td.period").evaluate_all(
        "tds => tds.map(td => { const r = document.createRange(); r.selectNodeContents(td);"
        " return r.getClientRects().length; })")
    assert len(lines) == 30 and set(lines) == {1}
    page.screenshot(path=str(ARTIFACTS / f"console-reports-{width}.png"), full_page=True)
    # a bad date: said on the Reports page, with its form
    page.goto(f"{base}/console/reports?since=2026-13-01")
    assert page.inner_text("p.error") == "since: not a date (YYYY-MM-DD)"
    assert page.locator("#report-form").is_visible()
    page.screenshot(path=str(ARTIFACTS / f"console-reports-bad-date-{width}.png"), full_page=True)
    assert problems == [f"400 {base}/console/reports?since=2026-13-01", "console error: Failed to load resource: "
                        "the server responded with a status of 400 (Bad Request)"]
