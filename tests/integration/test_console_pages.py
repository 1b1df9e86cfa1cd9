"""The console's pages over HTTP: banners only from message codes, local times with the zone named once,
report form errors on the Reports page, the console's own 404 / 405 page with a Back link to where the user
was, both report charts one width, an icon in every page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from console_support import app, seed, services, tokens
from starlette.testclient import TestClient

from callback_queue import schema as t
from callback_queue.clock import FakeClock
from callback_queue.store import Store
from daemon.http import charts
from daemon.http.console_messages import back_to

TZ = ZoneInfo("Asia/Shanghai")  # Settings() default [daemon] timezone


@pytest.fixture
def client(store: Store, clock: FakeClock) -> Iterator[TestClient]:
    seed(store, clock, 3)
    with TestClient(app(services(store, clock)), follow_redirects=False) as c:
        yield c


def login(client: TestClient, store: Store, clock: FakeClock, role: str = "admin") -> dict[str, str]:
    toks = tokens(store, clock)
    page = client.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    name = {"admin": "ada", "operator": "otto"}[role]
    r = client.post("/console/login", data={"name": name, "token": toks[role], "csrf": csrf, "next": "/console/"})
    assert r.status_code == 303 and r.headers["location"] == "/console/"
    return toks


def csrf_of(client: TestClient, path: str = "/console/") -> str:
    return re.search(r'name="csrf" value="([^"]+)"', client.get(path).text).group(1)  # type: ignore[union-attr]


def banner(html: str, cls: str) -> str | None:
    m = re.search(rf'<p class="{cls}" role="\w+">(.*?)</p>', html, re.S)
    return m.group(1) if m else None


def visible(html: str) -> str:
    """The page's text, without its tags (a <time datetime="...Z"> attribute is for machines)."""
    return re.sub(r"<[^>]+>", "", html)


# -- E4: message codes, not text from the URL ---------------------------------------------------------
def test_banners_show_fixed_texts_for_codes_and_nothing_else(client: TestClient, store: Store,
                                                            clock: FakeClock) -> None:
    login(client, store, clock)
    assert banner(client.get("/console/?notice=closed&id=5&state=reached").text, "notice") == "Callback 5: reached."
    assert banner(client.get("/console/?notice=released&id=7").text, "notice") == "Callback 7 is back in the queue."
    assert banner(client.get("/console/?notice=nothing_due").text, "notice") == "Nothing is due right now."
    assert banner(client.get("/console/?error=lease_lost&id=2").text, "error") == \
        "Callback 2 is claimed by someone else, or your claim on it has expired."
    for query in ("notice=Your+account+is+suspended,+call+0800", "notice=closed&id=5&state=hacked",
                  "notice=closed&id=five&state=reached", "notice=released", "notice=released&id=%EF%BC%95",
                  "error=Visit+evil.example", "error=not_found&id=99999999999999999999", "notice=__class__"):
        html = client.get(f"/console/?{query}").text
        assert banner(html, "notice") is None and banner(html, "error") is None, query
        assert "suspended" not in html and "evil.example" not in html and "hacked" not in html
    # the login page: its one code, nothing else
    client.cookies.clear()
    assert banner(client.get("/console/login?error=login").text, "error") == "Unknown user name or token."
    for query in ("error=Your+token+expired,+mail+it+to+x@evil.example", "error=lease_lost&id=1",
                  "notice=closed&id=1&state=reached"):
        html = client.get(f"/console/login?{query}").text
        assert banner(html, "error") is None and banner(html, "notice") is None and "evil.example" not in html


def test_the_console_redirects_with_codes(client: TestClient, store: Store, clock: FakeClock) -> None:
    login(client, store, clock)
    csrf = csrf_of(client)
    r = client.post("/console/claim", data={"csrf": csrf})
    cid = int(r.headers["location"].rsplit("/", 1)[1])
    r = client.post(f"/console/callbacks/{cid}/close", data={"csrf": csrf, "outcome": "reached"})
    assert r.headers["location"] == f"/console/?notice=closed&id={cid}&state=reached"
    assert banner(client.get(r.headers["location"]).text, "notice") == f"Callback {cid}: reached."
    # closing it again: not held any more -> a code naming the callback, shown on its page
    r = client.post(f"/console/callbacks/{cid}/close", data={"csrf": csrf, "outcome": "reached"})
    assert r.headers["location"] == f"/console/callbacks/{cid}?error=not_allowed&id={cid}"
    assert banner(client.get(r.headers["location"]).text, "error") == \
        f"Callback {cid} cannot be changed that way in its current state."
    r = client.post(f"/console/callbacks/{cid + 1}/cancel", data={"csrf": csrf, "reason": " "})
    assert r.headers["location"] == f"/console/callbacks/{cid + 1}?error=reason&id={cid + 1}"
    r = client.post(f"/console/callbacks/{cid + 1}/cancel", data={"csrf": csrf, "reason": "got through"})
    assert banner(client.get(r.headers["location"]).text, "notice") == f"Callback {cid + 1} cancelled."
    client.cookies.clear()
    page = client.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    r = client.post("/console/login", data={"name": "ada", "token": "cbd_wrong", "csrf": csrf})
    assert r.headers["location"].startswith("/console/login?error=login&")
    assert banner(client.get(r.headers["location"]).text, "error") == "Unknown user name or token."


# -- E2: local times, the zone named once ---------------------------------------------------------------
def test_the_callback_page_shows_local_times_only(client: TestClient, store: Store, clock: FakeClock) -> None:
    login(client, store, clock)
    csrf = csrf_of(client)
    cid = int(client.post("/console/claim", data={"csrf": csrf}).headers["location"].rsplit("/", 1)[1])
    html = client.get(f"/console/callbacks/{cid}").text
    assert html.count("Asia/Shanghai") == 1 and re.search(r'id="tz">times in Asia/Shanghai<', html)
    text = visible(html)
    assert "UTC" not in text and "+00:00" not in text and not re.search(r"\d{2}:\d{2}(:\d{2})?Z", text)
    times = re.findall(r'<time datetime="([^"]+)">([^<]+)</time>', html)
    assert len(times) == 5  # three failed calls, opened, claimed
    for iso, shown in times:
        local = datetime.fromisoformat(iso).astimezone(TZ)
        assert shown == local.strftime("%Y-%m-%d %H:%M:%S"), (iso, shown)
    # the claim's lease in its detail is local too (the claim is at clock.now(), 10:00 UTC = 18:00 local)
    lease = (clock.now() + timedelta(minutes=15)).astimezone(TZ).strftime("%Y-%m-%d %H:%M:%S")
    assert f"lease_until: {lease}" in html


def test_the_zone_is_named_once_on_every_page(client: TestClient, store: Store, clock: FakeClock) -> None:
    with store.write() as conn:  # planned windows: the admin page's table shows them
        conn.execute(sa.update(t.callbacks).values(window_start=datetime(2026, 11, 27, 11, 0, tzinfo=UTC)))
    login(client, store, clock)
    for path in ("/console/", "/console/admin", "/console/reports", "/console/callbacks/1"):
        html = client.get(path).text
        assert html.count("Asia/Shanghai") == 1, path
        assert "UTC" not in visible(html) and not re.search(r"T\d{2}:\d{2}(:\d{2})?Z", visible(html)), path
    assert "<td>2026-11-27 19:00</td>" in client.get("/console/admin").text  # 11:00 UTC


# -- E3: report form errors, the error page's Back link, the console's 404 -----------------------------------
def test_a_bad_report_form_is_explained_on_the_reports_page(client: TestClient, store: Store,
                                                           clock: FakeClock) -> None:
    login(client, store, clock)
    for query, msg in (("since=2026-13-01", "since: not a date (YYYY-MM-DD)"),
                       ("since=2026-11-01&until=yesterday", "until: not a date (YYYY-MM-DD)"),
                       ("by=month", "by: must be &#39;day&#39; or &#39;week&#39;"),
                       ("since=1999-01-01", "since: must be between 2000-01-01 and 2099-12-31"),
                       ("since=2026-11-20&until=2026-11-01", "until (2026-11-01) is before since (2026-11-20)")):
        r = client.get(f"/console/reports?{query}")
        assert r.status_code == 400, query
        assert banner(r.text, "error") == msg, (query, banner(r.text, "error"))
        assert "validation error" not in r.text and "pydantic" not in r.text and "[type=" not in r.text
        assert 'id="report-form"' in r.text and "<h1>Reports</h1>" in r.text  # the page, its form
        assert 'aria-current="page">Reports<' in r.text
    r = client.get("/console/reports?since=2026-13-01&by=week")
    assert 'name="since" value="2026-13-01"' in r.text  # the form as sent
    assert '<option value="week" selected>' in r.text
    # the CSV's error page goes back to the reports, with the same form
    r = client.get("/console/reports.csv?since=2026-13-01")
    assert r.status_code == 400 and "since: not a date (YYYY-MM-DD)" in r.text
    assert re.search(r'<a href="/console/reports\?since=2026-13-01" id="back">Back to the reports</a>', r.text)
    assert client.get("/console/reports?since=2026-11-01").status_code == 200


def test_unknown_console_paths_get_the_console_error_page(client: TestClient, store: Store,
                                                         clock: FakeClock) -> None:
    r = client.get("/console/callbacks/abc")
    assert r.status_code == 303 and r.headers["location"] == "/console/login?next=/console/callbacks/abc"
    assert client.post("/console/callbacks/abc").status_code == 404
    login(client, store, clock, "operator")
    for path, back in (("/console/callbacks/abc", "/console/"), ("/console/nope", "/console/"),
                       ("/console/callbacks/99999999999999999999999", "/console/"),
                       ("/console/callbacks/1/nope", "/console/callbacks/1")):
        r = client.get(path)
        assert r.status_code == 404, path
        assert r.headers["content-type"].startswith("text/html")
        assert '<link rel="stylesheet" href="/console/static/console.css">' in r.text
        assert "<h1>Not found</h1>" in r.text and f'href="{back}" id="back">Back to ' in r.text
        assert "otto (operator)" in r.text  # the header as on every page, logout form with its token
        assert re.search(r'name="csrf" value="[^"]+"', r.text)
    r = client.get("/console/callbacks/12345")
    assert r.status_code == 404 and "There is no callback 12345." in r.text
    r = client.get("/console/claim")  # a POST-only page
    assert r.status_code == 405 and r.headers["allow"] == "POST" and "<h1>Not allowed</h1>" in r.text
    # operators on an admin page: back to the due list, not to the page they may not see
    r = client.get("/console/reports")
    assert r.status_code == 403 and 'href="/console/" id="back">Back to the due list<' in r.text
    assert client.get("/healthz").status_code == 200 and client.get("/api/nope").status_code == 401


@pytest.mark.parametrize(("path", "back"), [
    ("/console/reports", ("/console/reports", "Back to the reports")),
    ("/console/reports.csv", ("/console/reports", "Back to the reports")),
    ("/console/admin", ("/console/admin", "Back to the heatmap & SLA")),
    ("/console/callbacks/5/close", ("/console/callbacks/5", "Back to callback 5")),
    ("/console/callbacks/5", ("/console/", "Back to the due list")),
    ("/console/claim", ("/console/", "Back to the due list")),
])
def test_back_goes_where_the_user_was(path: str, back: tuple[str, str]) -> None:
    assert back_to(path) == back


# -- E5: charts one width, labelled; E6: an icon ---------------------------------------------------------
def _rows(n: int, by: str = "day") -> list[SimpleNamespace]:
    start = datetime(2026, 10, 29)
    fields = ("flagged", "within_sla", "reached", "sms_sent", "sms_delivered", "rated", "satisfied", "resolved")
    out = []
    for i in range(n):
        d = start + timedelta(days=i * (7 if by == "week" else 1))
        period = f"{d:%G}-W{d:%V}" if by == "week" else f"{d:%Y-%m-%d}"
        out.append(SimpleNamespace(period=period, **{f: (i * 7 + k) % 5 for k, f in enumerate(fields)}))
    return out


@pytest.mark.parametrize(("n", "by"), [(1, "day"), (5, "week"), (30, "day"), (31, "day"), (400, "day"),
                                       (2525, "day")])
def test_both_charts_have_one_width_and_nothing_outside_it(n: int, by: str) -> None:
    rows = _rows(n, by)
    svgs = [charts.bars(rows, ("flagged", "within_sla", "reached")),
            charts.bars(rows, ("sms_sent", "sms_delivered", "rated", "satisfied", "resolved"))]
    for svg in svgs:
        assert re.search(r'viewBox="0 0 860 \d+"', svg) and "width=" not in svg.split(">", 1)[0]
        rights = [float(x) + float(w) for x, w in re.findall(r'<rect x="([\d.]+)" y="[\d.]+" width="([\d.]+)" '
                                                             r'height="[\d.]+" fill="#\w+"><title>', svg)]
        assert len(rights) == n * (3 if svg is svgs[0] else 5) and max(rights) <= 860 - 10
        labels = re.findall(r'<text x="([\d.]+)" [^>]*data-period="([^"]+)">([^<]+)</text>', svg)
        assert labels[-1][1] == rows[-1].period  # the last period is always labelled
        xs = [float(x) for x, _, _ in labels]
        widths = [len(text) * 6.2 for _, _, text in labels]
        assert xs[0] - widths[0] / 2 >= 0 and xs[-1] + widths[-1] / 2 <= 860  # no label cut off
        assert all(b - a >= (wa + wb) / 2 for a, b, wa, wb in zip(xs, xs[1:], widths, widths[1:]))  # no overlap
        gaps = [b - a for a, b in zip(xs, xs[1:])]
        assert not gaps or max(gaps) - min(gaps) < 0.2  # a regular step
        if n <= 31:
            assert len(labels) == n or len(labels) >= n // 3
    assert re.search(r'viewBox="0 0 (\d+) ', svgs[0]).group(1) == re.search(  # type: ignore[union-attr]
        r'viewBox="0 0 (\d+) ', svgs[1]).group(1)  # type: ignore[union-attr]
    texts = re.findall(r'data-period="[^"]+">([^<]+)<', svgs[0])
    if by == "week":
        assert texts[-1].startswith("W")  # 2026-W48 -> W48, not "6-W48"
    elif n >= 400:
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", texts[-1])  # several years: the year is shown
    else:
        assert re.fullmatch(r"\d{2}-\d{2}", texts[-1])


def test_every_console_page_has_an_icon(client: TestClient, store: Store, clock: FakeClock) -> None:
    assert 'rel="icon" href="data:image/svg+xml,' in client.get("/console/login").text
    login(client, store, clock)
    for path in ("/console/", "/console/reports", "/console/nope"):
        assert 'rel="icon" href="data:image/svg+xml,' in client.get(path).text
