"""The web console under /console/: server-rendered pages (Jinja2), plain forms, no build step.

Log in with your user name and API token; the console then keeps a session: a
random id in an HttpOnly, SameSite=Lax cookie, stored server-side only as its
SHA-256. Every form carries a CSRF token derived from the session id (the login
form: a double-submit cookie); a POST without the right one gets 403.

Banners after a redirect come from message codes mapped to fixed texts (console_messages.py). Times are
shown in [daemon] timezone, which the header names once.
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.staticfiles import StaticFiles

from callback_queue import reports
from callback_queue.callbacks import State
from callback_queue.errors import CallbackdError, NotFound, StoreError
from callback_queue.users import Role, User, csrf_ok, csrf_token

from ..logs import get_logger
from . import charts
from .api import can_see_number, report_range, timeline
from .api_schema import MAX_ID, ReportQuery
from .app import ROUTE_PROVIDERS, Services
from .auth import SESSION_COOKIE, HttpError, users
from .console_messages import ERRORS, NOTICES, back_to, error_code, message

if TYPE_CHECKING:
    from jinja2 import Environment

HERE = Path(__file__).parent
LOGIN_CSRF_COOKIE = "callbackd_login_csrf"
OUTCOMES = [("reached", "Reached"), ("no-answer", "No answer"), ("busy", "Busy"),
            ("wrong-number", "Wrong number"), ("declined", "Declined")]
log = get_logger("callbackd.console")


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
        q = self.request.query_params
        page = _common(self.services, self.request) | {
            "user": self.user, "csrf": csrf_token(self.session), "notice": message(NOTICES, q, "notice"),
            "error": message(ERRORS, q, "error")}
        return HTMLResponse(env().get_template(template).render(page | ctx), status_code=status)

    def field(self, name: str, default: str = "") -> str:
        v = self.form.get(name) if self.form is not None else None
        return v if isinstance(v, str) else default


def _common(services: Services, request: Request) -> dict[str, Any]:
    """What every page's template gets: local times, the zone's name, where "Back" goes."""
    tz = services.settings.tz
    return {"tz": tz, "tz_name": services.settings.daemon.timezone, "local": lambda d: _local(d, tz),
            "local_iso": lambda v: _local(datetime.fromisoformat(v), tz), "path": request.url.path,
            "back": back_to(request.url.path)}


def _local(d: Any, tz: Any, fmt: str = "%Y-%m-%d %H:%M") -> str:
    return d.astimezone(tz).strftime(fmt) if d else ""


def _plain(request: Request, status: int, title: str, text: str, *, user: User | None = None, session: str = "",
           back: tuple[str, str] | None = None, headers: dict[str, str] | None = None) -> HTMLResponse:
    """The error page outside a page handler (no session, wrong role, a form's token, no such page)."""
    ctx = _common(request.app.state.services, request) | {"title": title, "message": text, "user": user,
                                                           "csrf": csrf_token(session) if user else ""}
    if back is not None:
        ctx["back"] = back
    return HTMLResponse(env().get_template("error.html").render(ctx), status_code=status, headers=headers)


def page(handler: Callable[[Page], Response], role: Role = Role.OPERATOR) -> Callable[[Request], Any]:
    """Session, role and (for POST) CSRF checks around a synchronous page handler."""

    async def endpoint(request: Request) -> Response:
        services: Services = request.app.state.services
        session = request.cookies.get(SESSION_COOKIE, "")
        user = await run_in_threadpool(users(services).by_session, session) if session else None
        if user is None:
            if request.method == "GET":
                return RedirectResponse("/console/login?next=" + quote(request.url.path), status_code=303)
            return _plain(request, 401, "Not logged in", "Your session has ended: log in again.",
                          back=("/console/login", "Log in"))
        if role is Role.ADMIN and not user.is_admin:
            return _plain(request, 403, "Admins only", f"{user.name} is an operator; this page is for admins.",
                          user=user, session=session, back=("/console/", "Back to the due list"))
        form = None
        if request.method == "POST":
            # no form of ours takes files: max_files=0 refuses an upload (400) before it is spooled to a
            # temporary file nobody would close
            form = await request.form(max_files=0)
            given = form.get("csrf")
            if not csrf_ok(session, given if isinstance(given, str) else None):
                return _plain(request, 403, "Form expired", "The form's security token is missing or wrong: "
                                                            "reload the page and try again.", user=user,
                              session=session)
        return await run_in_threadpool(handler, Page(services, request, user, session, form))

    endpoint.__name__ = handler.__name__
    return endpoint


def _back(url: str, **params: str) -> RedirectResponse:
    return RedirectResponse(url + ("?" + urlencode(params) if params else ""), status_code=303)


# -- login ----------------------------------------------------------------------------------------
async def login_form(request: Request) -> Response:
    token = secrets.token_urlsafe(24)
    login_errors = {"login": ERRORS["login"]}
    html = env().get_template("login.html").render(user=None, csrf=token, next=_next(request.query_params.get("next")),
                                                   error=message(login_errors, request.query_params, "error"))
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
        return _plain(request, 403, "Form expired", "The login form's security token is missing or wrong: reload it.",
                      back=("/console/login", "Back to the login form"))
    name, token = str(form.get("name", "")).strip(), str(form.get("token", "")).strip()
    lifetime = services.settings.console.session_lifetime
    got = await run_in_threadpool(users(services).login, name, token, lifetime) if name and token else None
    nxt = _next(str(form.get("next", "")))
    if got is None:
        return _back("/console/login", error="login", next=nxt)
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
        return _back("/console/", notice="nothing_due")
    return _back(f"/console/callbacks/{got[0].id}")


def _cid(p: Page) -> int:
    cid = int(p.request.path_params["callback_id"])
    return cid if cid <= MAX_ID else 0  # 0 is never an id: "no callback 0"


def _guard(p: Page, fn: Callable[[], Response], cid: int) -> Response:
    try:
        return fn()
    except (CallbackdError, ValueError) as exc:
        code = error_code(exc)
        if code in ("store", "failed"):
            log.warning("console.action_failed", path=p.request.url.path, user=p.user.name, error=str(exc))
        return _back(f"/console/callbacks/{cid}", error=code, id=str(cid))


def claim_one(p: Page) -> Response:
    cid = _cid(p)
    return _guard(p, lambda: (p.services.queue.claim_one(cid, p.user.name), _back(f"/console/callbacks/{cid}"))[1],
                  cid)


def show(p: Page) -> Response:
    cid = _cid(p)
    try:
        d = p.services.queue.get(cid)
    except NotFound:
        return p.render("error.html", status=404, title="Not found",
                        message=f"There is no callback {p.request.path_params['callback_id']}.")
    except StoreError:
        return p.render("error.html", status=503, title="Database unavailable", message=ERRORS["store"],
                        back=(p.request.url.path, "Try again"))
    c = d.callback
    show_number = can_see_number(p.user, c)
    return p.render("callback.html", c=c, number=c.number if show_number else c.as_json(show_number=False)["number"],
                    held=c.state is State.DIALING and c.claimed_by == p.user.name,
                    timeline=local_timeline(timeline(d, show_number), p.services.settings.tz), outcomes=OUTCOMES)


_ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})")


def local_timeline(items: list[dict[str, Any]], tz: Any) -> list[dict[str, Any]]:
    """The API's timeline (UTC ISO times) for the page: each item's time, and the times in its details
    (a claim's lease_until, ...), in the local zone."""
    fmt = "%Y-%m-%d %H:%M:%S"
    for i in items:
        i["local"] = _local(datetime.fromisoformat(i["at"]), tz, fmt)
        if i.get("detail"):
            i["detail"] = {k: _local(datetime.fromisoformat(v), tz, fmt)
                           if isinstance(v, str) and _ISO_TIME.fullmatch(v) else v for k, v in i["detail"].items()}
    return items


def close(p: Page) -> Response:
    cid = _cid(p)

    def run() -> Response:
        c = p.services.queue.close(cid, p.user.name, p.field("outcome"), p.field("note").strip() or None)
        return _back("/console/", notice="closed", id=str(c.id), state=c.state.value)

    return _guard(p, run, cid)


def release(p: Page) -> Response:
    cid = _cid(p)

    def run() -> Response:
        p.services.queue.release(cid, p.user.name, note=p.field("note").strip() or None)
        return _back("/console/", notice="released", id=str(cid))

    return _guard(p, run, cid)


def cancel(p: Page) -> Response:
    cid = _cid(p)
    reason = p.field("reason").strip()
    if not reason:
        return _back(f"/console/callbacks/{cid}", error="reason", id=str(cid))

    def run() -> Response:
        p.services.queue.cancel(cid, p.user.name, reason[:500])
        return _back("/console/", notice="cancelled", id=str(cid))

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


class BadReport(ValueError):
    """A report's form was filled in wrong: the text says which field and how."""


def _report(p: Page) -> tuple[reports.Report, ReportQuery]:
    try:
        q = ReportQuery.model_validate(_report_form(p.request))
        since, until = report_range(p.services, q.since, q.until)
    except ValidationError as exc:
        raise BadReport("; ".join(_field_error(e) for e in exc.errors())) from None
    except HttpError as exc:
        raise BadReport(exc.message) from None
    s = p.services.settings
    return reports.build(p.services.store, s.tz, since, until, by=q.by, sla=s.console.report_sla), q


def _report_form(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.query_params.items() if k in ("since", "until", "by") and v}


def _field_error(e: Any) -> str:
    field = ".".join(str(x) for x in e["loc"]) or "the form"
    if e["type"].startswith("date"):
        return f"{field}: not a date (YYYY-MM-DD)"
    if e["type"] == "literal_error":
        return f"{field}: {e['msg'].replace('Input should be', 'must be')}"
    return f"{field}: {e['msg'].removeprefix('Value error, ')}"


def report_page(p: Page) -> Response:
    try:
        rep, q = _report(p)
    except BadReport as exc:  # the page again, with its form as sent and what is wrong with it
        return p.render("reports.html", status=400, rep=None, form=_report_form(p.request), error=str(exc))
    return p.render("reports.html", rep=rep, q=q, labels=reports.LABELS, fields=reports.FIELDS,
                    form={"since": str(rep.since), "until": str(rep.until), "by": rep.by},
                    reach_svg=charts.bars(rep.rows, ("flagged", "within_sla", "reached")),
                    rating_svg=charts.bars(rep.rows, ("sms_sent", "sms_delivered", "rated", "satisfied", "resolved")),
                    csv_url="/console/reports.csv?" + urlencode({"since": rep.since, "until": rep.until, "by": rep.by}))


def report_csv(p: Page) -> Response:
    try:
        rep, _ = _report(p)
    except BadReport as exc:
        return p.render("error.html", status=400, title="Bad report range", message=str(exc),
                        back=("/console/reports?" + urlencode(_report_form(p.request)), "Back to the reports"))
    return Response(rep.csv(), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="callbackd-report-{rep.since}-{rep.until}-{rep.by}.csv"'})


async def root(request: Request) -> Response:
    return RedirectResponse("/console/", status_code=307)


class ConsoleFallback(Route):
    """Every other path under /console/: the console's own 404 (or 405) page, not Starlette's plain text.
    create_app puts it after every provider's routes (`fallback`)."""

    fallback = True

    def __init__(self, routes: list[BaseRoute]) -> None:
        super().__init__("/console/{rest:path}", self.answer)
        self.methods = None  # any method: answer() says 405 or 404 itself
        self.routes = routes

    def matches(self, scope: Any) -> tuple[Match, Any]:
        if scope["type"] == "http" and scope["path"].startswith("/console/"):
            return Match.FULL, {"endpoint": self.endpoint, "path_params": {}}
        return Match.NONE, {}

    async def answer(self, request: Request) -> Response:
        services: Services = request.app.state.services
        session = request.cookies.get(SESSION_COOKIE, "")
        user = await run_in_threadpool(users(services).by_session, session) if session else None
        if user is None and request.method == "GET":  # as every console page: log in first
            return RedirectResponse("/console/login?next=" + quote(request.url.path), status_code=303)
        allowed = sorted({m for r in self.routes if isinstance(r, Route) and r is not self
                          for m in (r.methods or ()) if r.matches(request.scope)[0] is Match.PARTIAL})
        if allowed:
            return _plain(request, 405, "Not allowed", f"{request.method} is not allowed here.", user=user,
                          session=session, headers={"Allow": ", ".join(allowed)})
        return _plain(request, 404, "Not found", "There is no such page in the console.", user=user, session=session)


def console_routes(services: Services) -> list[BaseRoute]:
    cb = "/console/callbacks/{callback_id:int}"
    routes: list[BaseRoute] = [
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
    return [*routes, ConsoleFallback(routes)]


ROUTE_PROVIDERS.append(console_routes)
