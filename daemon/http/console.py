"""The web console under /console/: server-rendered pages (Jinja2), plain forms, no build step.

Log in with your user name and API token; the console then keeps a session: a
random id in an HttpOnly, SameSite=Lax cookie, stored server-side only as its
SHA-256. Every form carries a CSRF token derived from the session id (the login
form: a double-submit cookie); a POST without the right one gets 403.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from callback_queue import reports
from callback_queue.callbacks import State
from callback_queue.errors import CallbackdError
from callback_queue.users import Role, User, csrf_ok, csrf_token

from . import charts
from .api import can_see_number, report_range, timeline
from .api_schema import MAX_ID, ReportQuery
from .app import ROUTE_PROVIDERS, Services
from .auth import SESSION_COOKIE, HttpError, users

if TYPE_CHECKING:
    from jinja2 import Environment

HERE = Path(__file__).parent
LOGIN_CSRF_COOKIE = "callbackd_login_csrf"
OUTCOMES = [("reached", "Reached"), ("no-answer", "No answer"), ("busy", "Busy"),
            ("wrong-number", "Wrong number"), ("declined", "Declined")]


@cache
def env() -> Environment:
    """The templates, on the first page: Jinja2 (about 1.5 MiB) stays out of a daemon nobody browses."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    return Environment(loader=FileSystemLoader(HERE / "templates" / "console"), autoescape=select_autoescape(),
                       trim_blocks=True, lstrip_blocks=True)


@dataclass
class Page:
    services: Services
    request: Request
    user: User
    session: str
    form: FormData | None

    def render(self, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        tz = self.services.settings.tz
        html = env().get_template(template).render(
            user=self.user, csrf=csrf_token(self.session), tz=tz, local=lambda d: _local(d, tz),
            notice=self.request.query_params.get("notice"), error=self.request.query_params.get("error"),
            path=self.request.url.path, **ctx)
        return HTMLResponse(html, status_code=status)

    def field(self, name: str, default: str = "") -> str:
        v = self.form.get(name) if self.form is not None else None
        return v if isinstance(v, str) else default


def _local(d: Any, tz: Any) -> str:
    return d.astimezone(tz).strftime("%Y-%m-%d %H:%M") if d else ""


def _plain(status: int, title: str, message: str) -> HTMLResponse:
    return HTMLResponse(env().get_template("error.html").render(title=title, message=message, user=None),
                        status_code=status)


def page(handler: Callable[[Page], Response], role: Role = Role.OPERATOR) -> Callable[[Request], Any]:
    """Session, role and (for POST) CSRF checks around a synchronous page handler."""

    async def endpoint(request: Request) -> Response:
        services: Services = request.app.state.services
        session = request.cookies.get(SESSION_COOKIE, "")
        user = await run_in_threadpool(users(services).by_session, session) if session else None
        if user is None:
            if request.method == "GET":
                return RedirectResponse("/console/login?next=" + quote(request.url.path), status_code=303)
            return _plain(401, "Not logged in", "Your session has ended: log in again.")
        if role is Role.ADMIN and not user.is_admin:
            return _plain(403, "Admins only", f"{user.name} is an operator; this page is for admins.")
        form = None
        if request.method == "POST":
            # no form of ours takes files: max_files=0 refuses an upload (400) before it is spooled to a
            # temporary file nobody would close
            form = await request.form(max_files=0)
            given = form.get("csrf")
            if not csrf_ok(session, given if isinstance(given, str) else None):
                return _plain(403, "Form expired", "The form's security token is missing or wrong: reload the "
                                                   "page and try again.")
        return await run_in_threadpool(handler, Page(services, request, user, session, form))

    endpoint.__name__ = handler.__name__
    return endpoint


def _back(url: str, **params: str) -> RedirectResponse:
    return RedirectResponse(url + ("?" + urlencode(params) if params else ""), status_code=303)


# -- login ----------------------------------------------------------------------------------------
async def login_form(request: Request) -> Response:
    token = secrets.token_urlsafe(24)
    html = env().get_template("login.html").render(user=None, csrf=token, next=_next(request.query_params.get("next")),
                                                   error=request.query_params.get("error"))
    resp = HTMLResponse(html)
    resp.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict", path="/console/login",
                    secure=request.app.state.services.settings.console.secure_cookies)
    return resp


async def login(request: Request) -> Response:
    services: Services = request.app.state.services
    # no form of ours takes files: max_files=0 refuses an upload (400) before it is spooled to a
    # temporary file nobody would close
    form = await request.form(max_files=0)
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    given = form.get("csrf")
    if not cookie or not isinstance(given, str) or not hmac.compare_digest(cookie, given):
        return _plain(403, "Form expired", "The login form's security token is missing or wrong: reload it.")
    name, token = str(form.get("name", "")).strip(), str(form.get("token", "")).strip()
    lifetime = services.settings.console.session_lifetime
    got = await run_in_threadpool(users(services).login, name, token, lifetime) if name and token else None
    nxt = _next(str(form.get("next", "")))
    if got is None:
        return _back("/console/login", error="Unknown user name or token.", next=nxt)
    resp = RedirectResponse(nxt, status_code=303)
    resp.set_cookie(SESSION_COOKIE, got[1], max_age=int(lifetime.total_seconds()), httponly=True, samesite="lax",
                    path="/", secure=services.settings.console.secure_cookies)
    resp.delete_cookie(LOGIN_CSRF_COOKIE, path="/console/login")
    return resp


def _next(value: str | None) -> str:
    # only our own pages: no open redirect
    return value if value and value.startswith("/console/") and "//" not in value else "/console/"


def logout(p: Page) -> Response:
    users(p.services).logout(p.session)
    resp = _back("/console/login")
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


# -- operators ------------------------------------------------------------------------------------
def due_list(p: Page) -> Response:
    q = p.services.queue
    mine = [c for c in q.list(states=[State.DIALING.value]) if c.claimed_by == p.user.name]
    due = q.list(due=True, limit=50)
    return p.render("due.html", mine=mine, due=[c.as_json(show_number=False) | {"_cb": c} for c in due],
                    counts=q.counts())


def claim_next(p: Page) -> Response:
    got = p.services.queue.claim(p.user.name, 1)
    if not got:
        return _back("/console/", notice="Nothing is due right now.")
    return _back(f"/console/callbacks/{got[0].id}")


def _cid(p: Page) -> int:
    cid = int(p.request.path_params["callback_id"])
    return cid if cid <= MAX_ID else 0  # 0 is never an id: "no callback 0"


def _guard(p: Page, fn: Callable[[], Response], cid: int) -> Response:
    try:
        return fn()
    except (CallbackdError, ValueError) as exc:
        return _back(f"/console/callbacks/{cid}", error=str(exc))


def claim_one(p: Page) -> Response:
    cid = _cid(p)
    return _guard(p, lambda: (p.services.queue.claim_one(cid, p.user.name), _back(f"/console/callbacks/{cid}"))[1],
                  cid)


def show(p: Page) -> Response:
    cid = _cid(p)
    try:
        d = p.services.queue.get(cid)
    except CallbackdError as exc:
        return p.render("error.html", status=404, title="Not found", message=str(exc))
    c = d.callback
    show_number = can_see_number(p.user, c)
    return p.render("callback.html", c=c, number=c.number if show_number else c.as_json(show_number=False)["number"],
                    held=c.state is State.DIALING and c.claimed_by == p.user.name,
                    timeline=timeline(d, show_number), outcomes=OUTCOMES)


def close(p: Page) -> Response:
    cid = _cid(p)

    def run() -> Response:
        c = p.services.queue.close(cid, p.user.name, p.field("outcome"), p.field("note").strip() or None)
        return _back("/console/", notice=f"Callback {c.id}: {c.state.value.replace('_', ' ')}.")

    return _guard(p, run, cid)


def release(p: Page) -> Response:
    cid = _cid(p)

    def run() -> Response:
        p.services.queue.release(cid, p.user.name, note=p.field("note").strip() or None)
        return _back("/console/", notice=f"Callback {cid} is back in the queue.")

    return _guard(p, run, cid)


def cancel(p: Page) -> Response:
    cid = _cid(p)
    reason = p.field("reason").strip()
    if not reason:
        return _back(f"/console/callbacks/{cid}", error="Say why the callback is cancelled.")

    def run() -> Response:
        p.services.queue.cancel(cid, p.user.name, reason[:500])
        return _back("/console/", notice=f"Callback {cid} cancelled.")

    return _guard(p, run, cid)


# -- admins ---------------------------------------------------------------------------------------
def admin(p: Page) -> Response:
    s = p.services
    heat = reports.inbound_heatmap(s.store, s.settings.tz, s.clock.now(), 4)
    preview = None
    outlines: list[tuple[int, int, int]] = []
    if s.settings.schedule is not None:
        from callback_queue.windows import DAYS
        from daemon.schedule_preview import build

        preview = build(s.settings, s.store, s.clock.now(), days=7, weeks=4)
        for d, day in enumerate(DAYS):
            for start, end in _runs(preview["heatmap"]["windows"][day]):
                outlines.append((d, start, end))
    return p.render("admin.html", heat=heat, heatmap_svg=charts.heatmap(heat["total"], heat["max"], outlines),
                    sla=reports.sla_status(s.store, s.clock.now(), s.settings.console.report_sla),
                    preview=preview, windows=reports.per_window(s.store), counts=s.queue.counts())


def _runs(hours: list[int]) -> list[tuple[int, int]]:
    """[12, 13, 19] -> [(12, 14), (19, 20)]: contiguous hours as (start, end)."""
    out: list[tuple[int, int]] = []
    for h in hours:
        if out and out[-1][1] == h:
            out[-1] = (out[-1][0], h + 1)
        else:
            out.append((h, h + 1))
    return out


def _report(p: Page) -> tuple[reports.Report, ReportQuery]:
    q = ReportQuery.model_validate({k: v for k, v in p.request.query_params.items() if k in ReportQuery.model_fields
                                    and v})
    since, until = report_range(p.services, q.since, q.until)
    s = p.services.settings
    return reports.build(p.services.store, s.tz, since, until, by=q.by, sla=s.console.report_sla), q


def report_page(p: Page) -> Response:
    try:
        rep, q = _report(p)
    except (ValidationError, HttpError, ValueError) as exc:
        return p.render("error.html", status=400, title="Bad report range", message=str(exc))
    return p.render("reports.html", rep=rep, q=q, labels=reports.LABELS, fields=reports.FIELDS,
                    reach_svg=charts.bars(rep.rows, ("flagged", "within_sla", "reached")),
                    rating_svg=charts.bars(rep.rows, ("sms_sent", "sms_delivered", "rated", "satisfied", "resolved")),
                    csv_url="/console/reports.csv?" + urlencode({"since": rep.since, "until": rep.until, "by": rep.by}))


def report_csv(p: Page) -> Response:
    try:
        rep, _ = _report(p)
    except (ValidationError, HttpError, ValueError) as exc:
        return p.render("error.html", status=400, title="Bad report range", message=str(exc))
    return Response(rep.csv(), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="callbackd-report-{rep.since}-{rep.until}-{rep.by}.csv"'})


async def root(request: Request) -> Response:
    return RedirectResponse("/console/", status_code=307)


def console_routes(services: Services) -> list[BaseRoute]:
    cb = "/console/callbacks/{callback_id:int}"
    return [
        Route("/", root, methods=["GET"]),
        Route("/console", root, methods=["GET"]),
        Route("/console/login", login_form, methods=["GET"]),
        Route("/console/login", login, methods=["POST"]),
        Route("/console/logout", page(logout), methods=["POST"]),
        Route("/console/", page(due_list), methods=["GET"]),
        Route("/console/claim", page(claim_next), methods=["POST"]),
        Route(cb, page(show), methods=["GET"]),
        Route(cb + "/claim", page(claim_one), methods=["POST"]),
        Route(cb + "/close", page(close), methods=["POST"]),
        Route(cb + "/release", page(release), methods=["POST"]),
        Route(cb + "/cancel", page(cancel), methods=["POST"]),
        Route("/console/admin", page(admin, Role.ADMIN), methods=["GET"]),
        Route("/console/reports", page(report_page, Role.ADMIN), methods=["GET"]),
        Route("/console/reports.csv", page(report_csv, Role.ADMIN), methods=["GET"]),
        Mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static"),
    ]


ROUTE_PROVIDERS.append(console_routes)
