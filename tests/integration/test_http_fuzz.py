"""Fuzzing every route of the HTTP app in-process, on SQLite and PostgreSQL: no request gets a 5xx.

test_api_fuzz.py walks /api through its OpenAPI document (schemathesis); this file covers every route of
the app's route table (daemon/http/app.py ROUTE_PROVIDERS: the API, the console, the rating page, the
Twilio webhooks, metrics, health), which no OpenAPI document describes:

2. malformed bodies, wrong and missing content types, huge fields, odd path parameters, with good
   credentials (so the handler itself is reached: a console session and its CSRF token, a valid rating
   link, a valid Twilio signature) and with bad ones (no or wrong tokens, foreign or missing CSRF
   tokens, forged signatures);
3. form fields drawn by hypothesis for every form route (console, rating, Twilio), signed and
   CSRF-correct, so the fields reach the handlers.

Found and fixed: a multipart upload to any form route (console, login, rating, Twilio webhooks - the
last three public) was spooled to a temporary file that nothing closed (a ResourceWarning per request,
an open file until garbage collection); our forms take no files, and `request.form(max_files=0)` now
answers 400 before anything is spooled.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlencode

from console_support import seed, services, tokens
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Mount, Route
from starlette.testclient import TestClient
from twilio.request_validator import RequestValidator

from callback_queue.clock import FakeClock
from callback_queue.store import Store
from callback_queue.users import csrf_token
from daemon.http.app import Services, create_app
from daemon.settings import Settings

# -- 2. every route of the route table -------------------------------------------------------------
PUBLIC = "https://cb.example.gov.cn"
TWILIO_TOKEN = "test-auth-token"
HUGE = "x" * (2 << 20)   # 2 MiB: past Starlette's 1 MiB limit for a form field
#: path parameter values by convertor
PATH_VALUES = {"int": ["1", "0", "99999999999999999999999999"],
               "str": ["AbCdEfGhIjKlMnOpQrSt", "x", "A" * 2000, "%00", "%2e%2e", "%ZZ", "\u5f20"]}
#: (content type or None, body) - malformed in every way we could think of
BODIES: list[tuple[str | None, bytes]] = [
    (None, b""),
    ("application/json", b"{"),
    ("application/json", b"[1, 2"),
    ("application/json", b'{"a": ' * 200 + b"1" + b"}" * 200),
    ("application/json", b'{"note": "' + HUGE.encode() + b'"}'),
    ("application/json", b"\xff\xfe\x00garbage"),
    ("application/json; charset=latin-1", b'{"outcome": "reached"}'),
    ("application/x-www-form-urlencoded", b"a=%zz&b=%&=&&csrf=%00"),
    ("application/x-www-form-urlencoded", b"note=" + HUGE.encode()),
    ("application/x-www-form-urlencoded", b"\xff\xfe=\xfd"),
    ("multipart/form-data", b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--x--"),
    ("multipart/form-data; boundary=zz", b"garbage without a boundary"),
    ("multipart/form-data; boundary=zz", b"--zz\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a\"\r\n"
                                         b"\r\n" + b"y" * (1 << 20) + b"\r\n--zz--\r\n"),
    ("text/plain", b"outcome=reached"),
    ("application/xml", b"<?xml version='1.0'?><!DOCTYPE a [<!ENTITY b 'c'>]><a>&b;</a>"),
]


class Web:
    """The whole app over one store, with a logged-in console session, a rating link, signed webhooks."""

    def __init__(self, store: Store, clock: FakeClock, tmp: Path) -> None:
        from daemon.http import api, console, metrics, rating, twilio_hooks  # noqa: F401 - they register routes
        from sms.tokens import create_link

        self.ids = seed(store, clock, 3)
        settings = Settings.model_validate({
            "daemon": {"state_dir": str(tmp)}, "store": {"url": store.url}, "http": {"public_url": PUBLIC},
            "twilio": {"account_sid": "AC" + "0" * 32, "auth_token": TWILIO_TOKEN}})
        svc = Services(settings=settings, store=store, clock=clock, queue=services(store, clock).queue)
        self.app = create_app(svc)
        self.client = TestClient(self.app, raise_server_exceptions=False, base_url=PUBLIC)
        self.tokens = tokens(store, clock)
        with store.write() as conn:
            self.link = create_link(conn, self.ids[0], clock.now(), timedelta(days=7))
        self.session = self._login()
        self.statuses: dict[str, set[int]] = {}
        self.requests = 0

    def _login(self) -> str:
        c = self.client
        c.get("/console/login")
        csrf = c.cookies.get("callbackd_login_csrf")
        r = c.post("/console/login", data={"name": "ada", "token": self.tokens["admin"], "csrf": csrf},
                   follow_redirects=False)
        assert r.status_code == 303, r.text
        session = r.cookies.get("callbackd_session") or c.cookies.get("callbackd_session")
        assert session
        c.cookies.clear()
        return session

    def routes(self) -> list[tuple[str, str]]:
        """(method, path template) of every route, Mounts included (their root)."""
        out = []
        for r in self.app.routes:
            if isinstance(r, Route):
                out += [(m, r.path) for m in sorted(r.methods or ()) if m != "HEAD"]
            elif isinstance(r, Mount):
                out.append(("GET", r.path + "/{path}"))
        return out

    def paths(self, template: str) -> list[str]:
        params = re.findall(r"\{(\w+)(?::(\w+))?\}", template)
        if not params:
            return [template]
        out = []
        for name, conv in params[:1]:
            values = PATH_VALUES.get(conv or "str", PATH_VALUES["str"])
            if name == "token":
                values = [self.link, *values]
            elif conv == "int":
                values = [str(self.ids[0]), *values]
            elif name == "path":
                values = ["console.css", "../../etc/passwd", "%2e%2e/x", "x" * 3000]
            for v in values:
                out.append(re.sub(r"\{" + name + r"(:\w+)?\}", v, template))
        return [re.sub(r"\{(\w+)(:\w+)?\}", "1", p) for p in out]

    def send(self, method: str, path: str, *, ctype: str | None = None, body: bytes = b"",
             auth: str = "good", query: str = "") -> int:
        headers: dict[str, str] = {}
        cookies: dict[str, str] = {}
        url = path + (("?" + query) if query else "")
        if ctype:
            headers["Content-Type"] = ctype
        if auth == "good":
            headers["Authorization"] = f"Bearer {self.tokens['admin']}"
            cookies["callbackd_session"] = self.session
            if path.startswith("/twilio/"):
                headers["X-Twilio-Signature"] = RequestValidator(TWILIO_TOKEN).compute_signature(PUBLIC + url, {})
        elif auth == "bad":
            headers["Authorization"] = "Bearer " + "x" * 5000
            cookies["callbackd_session"] = "forged"
            headers["X-Twilio-Signature"] = "bm90IGEgc2lnbmF0dXJl"
        elif auth == "odd":
            headers["Authorization"] = "Basic \u00e9\u00e9".encode("latin-1")  # type: ignore[assignment]
            headers["X-Twilio-Signature"] = ""
            cookies["callbackd_session"] = "%00%00;;=="
        if cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        r = self.client.request(method, url, content=body if method != "GET" else None, headers=headers,
                                follow_redirects=False)
        self.client.cookies.clear()
        self.requests += 1
        self.statuses.setdefault(f"{method} {path}", set()).add(r.status_code)
        assert r.status_code < 500, (method, url[:200], ctype, body[:200], auth, r.status_code, r.text[:500])
        return r.status_code

    def form(self, method: str, path: str, fields: dict[str, str]) -> int:
        """A form as the route's rightful client sends it: CSRF token or Twilio signature included."""
        if path.startswith("/console/") and path != "/console/login":
            fields = {**fields, "csrf": csrf_token(self.session)}
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": f"callbackd_session={self.session}"}
        if path.startswith("/twilio/"):
            headers["X-Twilio-Signature"] = RequestValidator(TWILIO_TOKEN).compute_signature(PUBLIC + path, fields)
        r = self.client.request(method, path, content=urlencode(fields).encode(), headers=headers,
                                follow_redirects=False)
        self.client.cookies.clear()
        self.requests += 1
        self.statuses.setdefault(f"{method} {path}", set()).add(r.status_code)
        assert r.status_code < 500, (method, path, fields, r.status_code, r.text[:500])
        return r.status_code


def test_every_route_survives_malformed_requests(store: Store, clock: FakeClock, tmp_path: Path) -> None:
    web = Web(store, clock, tmp_path)
    routes = web.routes()
    prefixes = {p.split("/")[1] for _, p in routes}
    assert {"api", "console", "r", "twilio", "metrics", "healthz", "readyz"} <= prefixes, prefixes
    covered = set()
    for method, template in routes:
        for path in web.paths(template):
            covered.add((method, template))
            for auth in ("none", "bad", "odd"):
                web.send(method, path, auth=auth, ctype="application/json", body=b"{}")
            web.send(method, path, query="since=%ff&until=9999999999999&by=%00&lang=" + "e" * 3000 + "&next=//x")
            if method == "GET":
                continue
            for ctype, body in BODIES:
                web.send(method, path, ctype=ctype, body=body)
    # CSRF: a console form without the token, with another session's token, with the token of no session
    for _, template in [r for r in routes if r[0] == "POST" and r[1].startswith("/console/")]:
        path = web.paths(template)[0]
        for csrf in ("", csrf_token("another-session"), "x" * 100000):
            status = web.send("POST", path, ctype="application/x-www-form-urlencoded",
                              body=urlencode({"csrf": csrf, "outcome": "reached", "reason": "r"}).encode())
            assert status in (401, 403), (path, csrf[:10], status)
    assert covered == set(routes)
    print(f"route fuzz: {len(routes)} routes, {web.requests} requests")


# -- 3. form fields drawn by hypothesis, for every form route --------------------------------------
FIELD_NAMES = ["outcome", "note", "reason", "csrf", "name", "token", "next", "resolved", "satisfaction",
               "comment", "lang", "MessageSid", "SmsSid", "MessageStatus", "SmsStatus", "ErrorCode", "From", "To",
               "Body", "CallSid", "CallStatus", "CallDuration", "AnsweredBy", "Timestamp", "SequenceNumber",
               "QueueTime", "DialCallStatus", "DialCallDuration", "Caller", "Direction", "ParentCallSid"]
FIELD_VALUES = st.one_of(
    st.text(max_size=30), st.sampled_from(["", "reached", "no-answer", "resolved", "satisfied", "delivered",
                                           "failed", "completed", "busy", "machine_start", "TD", "STOP", "退订",
                                           "+8613812345678", "-1", "99999999999999999999", "nan", "1e400",
                                           "CA" + "a" * 32, "SM" + "0" * 32, "/console/", "//evil.example"]))


def test_form_routes_take_any_fields(store: Store, clock: FakeClock, tmp_path: Path) -> None:
    web = Web(store, clock, tmp_path)
    # (not /console/logout: it would end the session the other forms need)
    forms = [web.paths(p)[0] for m, p in web.routes()
             if m == "POST" and not p.startswith("/api/") and p != "/console/logout"]
    assert len(forms) >= 12, forms

    def fuzz(path: str) -> None:
        @given(fields=st.dictionaries(st.sampled_from(FIELD_NAMES), FIELD_VALUES, max_size=8))
        @settings(max_examples=max(30, settings().max_examples // 3), deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(fields: dict[str, str]) -> None:
            web.form("POST", path, fields)

        run()

    for path in forms:
        fuzz(path)
    assert set(forms) <= {k.split(" ", 1)[1] for k in web.statuses}
