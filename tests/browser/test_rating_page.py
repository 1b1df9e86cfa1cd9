"""The evaluation page in real headless Chromium (JavaScript off): open the link from the SMS, rate,
thank-you page; the rating in `callbackd callbacks show`; "already rated"; the expiry page; screenshots
at phone width in test-artifacts/."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sms_support import add_callback, callback_state, outbox, settings_for, write_config

from callback_queue.clock import FakeClock
from callback_queue.queue import CallbackQueue
from callback_queue.store import Store
from daemon.cli import cli
from daemon.http import rating
from daemon.http.app import HttpServer, Services, create_app
from sms.senders.console import ConsoleSender

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("CALLBACKD_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def browser() -> Iterator[Any]:
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture
def site(tmp_path: Path, clock: FakeClock) -> Iterator[dict[str, Any]]:
    url = f"sqlite:///{tmp_path / 'callbackd.db'}"
    store = Store(url)
    store.upgrade()
    settings = settings_for(tmp_path, url)
    services = Services(settings=settings, store=store, clock=clock, queue=CallbackQueue(store, clock))
    server = HttpServer(create_app(services, providers=[rating.routes]), "127.0.0.1", 0)
    server.start()
    console = ConsoleSender(tmp_path / "sms.jsonl")
    box = outbox(store, clock, {"console": console}, link_base=f"http://127.0.0.1:{server.port}")
    try:
        yield {"store": store, "clock": clock, "box": box, "console": console, "url": url, "tmp": tmp_path}
    finally:
        server.stop()
        store.dispose()


def _link(sms_body: str) -> str:
    m = re.search(r"https?://\S+/r/[A-Za-z0-9_-]+", sms_body)
    assert m, f"no link in {sms_body!r}"
    return m.group(0)


def test_rate_from_the_sms_link(site: dict[str, Any], browser: Any) -> None:
    store, clock = site["store"], site["clock"]
    cid = add_callback(store, clock.now(), "+8613800138001")
    other = add_callback(store, clock.now(), "+8613800138002", kind="followup", request_id="XN-9")
    assert site["box"].tick().sent == 2
    bodies = {m["to"]: str(m["body"]) for m in site["console"].messages()}
    link, other_link = _link(bodies["+8613800138001"]), _link(bodies["+8613800138002"])
    ARTIFACTS.mkdir(exist_ok=True)

    ctx = browser.new_context(viewport=PHONE, java_script_enabled=False, locale="zh-CN", device_scale_factor=2)
    page = ctx.new_page()
    resp = page.goto(link)
    assert resp.status == 200
    assert page.locator("h2").inner_text() == "服务评价"
    assert page.get_by_text("您的诉求是否已解决？").is_visible()
    assert page.get_by_text("您对本次服务是否满意？").is_visible()
    # mobile-first: nothing wider than the phone
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert page.get_by_role("button", name="提交评价").bounding_box()["width"] > PHONE["width"] * 0.8
    page.get_by_label("部分解决").check()
    page.get_by_label("基本满意").check()
    page.get_by_label("意见或建议（选填）").fill("希望处理再快一些")
    page.screenshot(path=str(ARTIFACTS / "rating-form-390.png"), full_page=True)
    page.get_by_role("button", name="提交评价").click()
    page.wait_for_url(re.compile(r"/thanks"))
    assert page.locator("h2").inner_text() == "感谢您的评价"
    page.screenshot(path=str(ARTIFACTS / "rating-thanks-390.png"), full_page=True)
    assert (ARTIFACTS / "rating-form-390.png").stat().st_size > 5000

    # the rating is in the callback's history, as operators see it
    assert callback_state(store, cid) == "evaluated"
    cfg = write_config(site["tmp"], site["url"])
    run = CliRunner().invoke(cli, ["callbacks", "show", str(cid), "--config", str(cfg)])
    assert run.exit_code == 0, run.output
    assert "evaluated" in run.output and "partly" in run.output
    shown = CliRunner().invoke(cli, ["callbacks", "show", str(cid), "--format", "json", "--config", str(cfg)])
    ev = [e for e in json.loads(shown.output)["events"] if e["event"] == "evaluated"]
    assert ev and ev[0]["detail"]["resolved"] == "partly" and ev[0]["detail"]["satisfaction"] == "basic"
    assert ev[0]["detail"]["comment"] == "希望处理再快一些"

    # the same link again: already rated
    resp = page.goto(link)
    assert page.locator("h2").inner_text() == "您已评价过"
    assert page.locator("form").count() == 0

    # English, then the link expires
    resp = page.goto(other_link + "?lang=en")
    assert page.get_by_text("Was your request resolved?").is_visible()
    assert page.get_by_text("How satisfied are you?").is_visible()
    page.screenshot(path=str(ARTIFACTS / "rating-form-en-390.png"), full_page=True)
    clock.advance(timedelta(days=7, seconds=1))
    resp = page.goto(other_link)
    assert resp.status == 410
    assert page.locator("h2").inner_text() == "链接已过期"
    assert "7天" in page.locator("section").inner_text()
    page.screenshot(path=str(ARTIFACTS / "rating-expired-390.png"), full_page=True)
    assert callback_state(store, other) == "sms_sent"
    ctx.close()


def test_the_form_needs_both_answers(site: dict[str, Any], browser: Any) -> None:
    store, clock = site["store"], site["clock"]
    add_callback(store, clock.now(), "+8613800138003")
    site["box"].tick()
    link = _link(str(site["console"].messages()[0]["body"]))
    ctx = browser.new_context(viewport=PHONE, java_script_enabled=False)
    page = ctx.new_page()
    # a browser that ignores `required` (or a hand-made POST) gets the form back with the error
    resp = page.request.post(link, form={"resolved": "resolved", "lang": "zh-CN"})
    assert resp.status == 400 and "请回答以上两个问题" in resp.text()
    page.goto(link)
    assert page.locator("input[required]").count() == 6
    ctx.close()
