"""The operators' and admins' HTTP API under /api/: a thin layer over CallbackQueue and the reports.

Every route needs a bearer token; admin routes answer 403 to operators. Numbers are
masked unless the caller holds the claim on that callback (or is an admin), as on
the console. The OpenAPI document (GET /openapi.json, bearer token too) is built
from the same table of operations the routes are (api_schema.Op).
"""

from __future__ import annotations

from datetime import date
from typing import Any

from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Route

from callback_queue import reports
from callback_queue.callbacks import OPEN_STATES, Callback, State
from callback_queue.clock import utc_from_ts
from callback_queue.numbers import mask
from callback_queue.queue import CallbackDetail
from callback_queue.users import Role, User

from .api_schema import (
    E164_RE,
    MAX_ID,
    REF_CALLBACK,
    REF_PAGE,
    CancelBody,
    ClaimBody,
    CloseBody,
    DncBody,
    FollowupBody,
    FollowupQuery,
    HeatmapQuery,
    ListQuery,
    Op,
    ReleaseBody,
    ReportQuery,
    openapi,
)
from .app import ROUTE_PROVIDERS, Services
from .auth import Call, HttpError, api_endpoint, bearer_user, error_response, translate


def can_see_number(user: User, c: Callback) -> bool:
    return user.is_admin or (c.state is State.DIALING and c.claimed_by == user.name)


def _cb(call: Call, c: Callback) -> dict[str, Any]:
    return c.as_json(show_number=can_see_number(call.user, c))


def _id(call: Call) -> int:
    cid = int(call.path["callback_id"])
    if not 1 <= cid <= MAX_ID:
        raise HttpError(404, "not_found", f"no callback {cid}")
    return cid


def _states(given: list[str] | None) -> list[str] | None:
    if not given:
        return None
    out: list[str] = []
    for s in given:
        out += [x.value for x in OPEN_STATES] if s == "open" else [s]
    return sorted(set(out))


def _page(call: Call, items: list[Callback], limit: int, offset: int) -> dict[str, Any]:
    more = len(items) > limit
    return {"items": [_cb(call, c) for c in items[:limit]], "limit": limit, "offset": offset,
            "next_offset": offset + limit if more else None}


def timeline(detail: CallbackDetail, show_number: bool) -> list[dict[str, Any]]:
    """The callback's story in time order: the attempts that triggered it, then every event
    (claims, each call's outcome, SMS and rating events written by the SMS feature)."""
    items: list[dict[str, Any]] = []
    for a in detail.attempts:
        items.append({"at": utc_from_ts(a.started_ts), "kind": "attempt",
                      "title": f"inbound call {a.outcome} ({a.reason})",
                      "detail": {"call_id": a.call_id, "wait_seconds": a.wait_seconds, "queue": a.queue,
                                 "source": a.origin, "number": a.number if show_number else mask(a.number)}})
    for e in detail.events:
        change = f"{e.from_state or '·'} → {e.to_state}" if e.to_state else ""
        items.append({"at": e.at, "kind": "event", "title": e.event, "actor": e.actor, "change": change,
                      "detail": e.detail})
    items.sort(key=lambda i: i["at"])
    for i in items:
        i["at"] = i["at"].isoformat().replace("+00:00", "Z")
    return items


# -- handlers (synchronous: run in the thread pool) ----------------------------------------------
def _json(*parts: bytes | str) -> Response:
    """A JSON document already written (CallbackQueue.list_json, claim_json): the bytes JSONResponse would
    send for the same dicts, without building them."""
    return Response(b"".join(p.encode() if isinstance(p, str) else p for p in parts), media_type="application/json")


def list_callbacks(call: Call) -> Any:
    q: ListQuery = call.query
    items, more = call.services.queue.list_json(
        viewer=call.user.name, show_all=call.user.is_admin, states=_states(q.state), due=q.due, limit=q.limit,
        offset=q.offset, number=q.number, kind=q.kind)
    return _json(b'{"items":[', items, f'],"limit":{q.limit},"offset":{q.offset},"next_offset":'
                 f'{q.offset + q.limit if more else "null"}}}')


def show_callback(call: Call) -> Any:
    d = call.services.queue.get(_id(call))
    show = can_see_number(call.user, d.callback)
    return {"callback": _cb(call, d.callback), "timeline": timeline(d, show)}


def claim_next(call: Call) -> Any:
    return _json(b'{"items":[', call.services.queue.claim_json(call.user.name, call.body.count), b"]}")


def claim_callback(call: Call) -> Any:
    return _cb(call, call.services.queue.claim_one(_id(call), call.user.name))


def _force(call: Call, force: bool) -> bool:
    if force and not call.user.is_admin:
        raise HttpError(403, "forbidden", "only admins may close or release a callback someone else holds")
    return force


def close_callback(call: Call) -> Any:
    b: CloseBody = call.body
    c = call.services.queue.close(_id(call), call.user.name, b.outcome, b.note, force=_force(call, b.force))
    return _cb(call, c)


def release_callback(call: Call) -> Any:
    b: ReleaseBody = call.body
    return _cb(call, call.services.queue.release(_id(call), call.user.name, force=_force(call, b.force),
                                                 note=b.note))


def cancel_callback(call: Call) -> Any:
    return _cb(call, call.services.queue.cancel(_id(call), call.user.name, call.body.reason))


def list_followups(call: Call) -> Any:
    q: FollowupQuery = call.query
    items = call.services.queue.list(states=_states(q.state), kind="followup", limit=q.limit + 1, offset=q.offset)
    return _page(call, items, q.limit, q.offset)


def create_followup(call: Call) -> Any:
    from sms.followups import FollowupRefused, Followups

    b: FollowupBody = call.body
    try:
        c = Followups(call.services.store, call.services.clock).add(b.number, b.request_id, due_at=b.due_at,
                                                                    priority=b.priority, actor=call.user.name)
    except FollowupRefused as exc:
        raise HttpError(409, "refused", str(exc)) from None
    return _cb(call, c)


def list_dnc(call: Call) -> Any:
    from sms.contacts import DoNotContact

    return {"items": [{"number": e.number, "source": e.source, "reason": e.reason,
                       "created_at": e.created_at.isoformat().replace("+00:00", "Z")}
                      for e in DoNotContact(call.services.store, call.services.clock).list()]}


def add_dnc(call: Call) -> Any:
    from sms.contacts import DoNotContact

    b: DncBody = call.body
    added, cancelled = DoNotContact(call.services.store, call.services.clock).add(
        b.number, "operator", b.reason, actor=call.user.name)
    return {"number": b.number, "newly_listed": added, "cancelled_callbacks": cancelled}


def remove_dnc(call: Call) -> Any:
    from sms.contacts import DoNotContact

    number = str(call.path["number"])
    if not E164_RE.fullmatch(number):
        raise HttpError(400, "bad_request", f"{number!r} is not an E.164 number")
    if not DoNotContact(call.services.store, call.services.clock).remove(number):
        raise HttpError(404, "not_found", f"{number} is not on the do-not-contact list")
    return {"number": number, "removed": True}


def report_range(services: Services, since: date | None, until: date | None) -> tuple[date, date]:
    today = services.clock.now().astimezone(services.settings.tz).date()
    lo, hi = reports.default_range(today)
    since, until = since or (until - (hi - lo) if until else lo), until or hi
    if until < since:
        raise HttpError(400, "bad_request", f"until ({until}) is before since ({since})")
    if (until - since).days > 3660:
        raise HttpError(400, "bad_request", "a report covers at most ten years")
    return since, until


def get_report(call: Call) -> Any:
    q: ReportQuery = call.query
    s = call.services.settings
    since, until = report_range(call.services, q.since, q.until)
    rep = reports.build(call.services.store, s.tz, since, until, by=q.by, sla=s.console.report_sla)
    if q.format == "csv":
        return Response(rep.csv(), media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="callbackd-report-{since}-{until}-{q.by}.csv"'})
    return rep.as_json()


def get_heatmap(call: Call) -> Any:
    s = call.services
    return reports.inbound_heatmap(s.store, s.settings.tz, s.clock.now(), call.query.weeks)


def get_sla(call: Call) -> Any:
    s = call.services
    return {"sla": reports.sla_status(s.store, s.clock.now(), s.settings.console.report_sla),
            "windows": reports.per_window(s.store),
            "capacity": None}  # TODO(planner): capacity per window once the planner exposes it


def get_config(call: Call) -> Any:
    return call.services.settings.redacted()


def whoami(call: Call) -> Any:
    return {"name": call.user.name, "role": call.user.role.value}


_CB = "/api/callbacks/{callback_id:int}"
OPS: list[Op] = [
    Op("GET", "/api/me", whoami, "who the token belongs to"),
    Op("GET", "/api/callbacks", list_callbacks, "list callbacks (filters, paging; most urgent first)",
       query=ListQuery, response=REF_PAGE),
    Op("POST", "/api/callbacks/claim", claim_next, "claim the next due callbacks (a lease)", body=ClaimBody),
    Op("GET", _CB, show_callback, "one callback and its timeline"),
    Op("POST", _CB + "/claim", claim_callback, "claim this callback", response=REF_CALLBACK),
    Op("POST", _CB + "/close", close_callback, "record how the call went", body=CloseBody, response=REF_CALLBACK),
    Op("POST", _CB + "/release", release_callback, "give the claim back", body=ReleaseBody,
       response=REF_CALLBACK),
    Op("POST", _CB + "/cancel", cancel_callback, "cancel an open callback", body=CancelBody,
       response=REF_CALLBACK),
    Op("GET", "/api/followups", list_followups, "list follow-ups (satisfaction calls)", query=FollowupQuery,
       response=REF_PAGE),
    Op("POST", "/api/followups", create_followup, "file a follow-up for a closed request", role=Role.ADMIN,
       body=FollowupBody, response=REF_CALLBACK, status=201),
    Op("GET", "/api/do-not-contact", list_dnc, "the do-not-contact list", role=Role.ADMIN),
    Op("POST", "/api/do-not-contact", add_dnc, "put a number on the do-not-contact list (cancels its open "
       "callbacks)", role=Role.ADMIN, body=DncBody),
    Op("DELETE", "/api/do-not-contact/{number}", remove_dnc, "take a number off the do-not-contact list",
       role=Role.ADMIN),
    Op("GET", "/api/reports", get_report, "the report by day or week (JSON or CSV)", role=Role.ADMIN,
       query=ReportQuery, csv=True),
    Op("GET", "/api/stats/heatmap", get_heatmap, "inbound volume per weekday x hour", role=Role.ADMIN,
       query=HeatmapQuery),
    Op("GET", "/api/stats/sla", get_sla, "open callbacks by SLA standing; callbacks per window",
       role=Role.ADMIN),
    Op("GET", "/api/config", get_config, "the effective configuration, secrets redacted", role=Role.ADMIN),
]
class PreviewQuery(HeatmapQuery):
    days: int = Field(default=7, ge=1, le=400, description="how many days, from `start`")
    start: date | None = Field(default=None, description="the first day (YYYY-MM-DD, local time); default today")


def get_preview(call: Call) -> Any:
    from daemon.schedule_preview import build

    q: PreviewQuery = call.query
    try:
        return build(call.services.settings, call.services.store, call.services.clock.now(), days=q.days,
                     weeks=q.weeks, start=q.start)
    except LookupError as exc:
        raise HttpError(409, "conflict", str(exc)) from None


OPS.append(Op("GET", "/api/schedule/preview", get_preview, "what the schedule will do: windows, capacity, "
              "callbacks planned, SLA breaches ahead, inbound heatmap", role=Role.ADMIN, query=PreviewQuery,
              errors=(400, 409, 422)))


def api_routes(services: Services) -> list[BaseRoute]:
    routes: list[Route] = [
        Route(op.path, api_endpoint(op.handler, role=op.role, query=op.query, body=op.body, status=op.status),
              methods=[op.method], name=f"api:{op.handler.__name__}")
        for op in OPS
    ]
    doc = openapi(OPS, version=_version())

    def openapi_json(call: Call) -> Any:
        return doc

    routes.append(Route("/openapi.json", api_endpoint(openapi_json, role=Role.OPERATOR), methods=["GET"]))

    async def not_found(request: Request) -> Response:
        # an unknown /api/ path: 401 before anything is revealed, then 405 or 404 in JSON
        from starlette.concurrency import run_in_threadpool

        try:
            await run_in_threadpool(bearer_user, request.app.state.services, request)
        except Exception as exc:  # noqa: BLE001
            return translate(exc) or error_response(500, "internal_error", "authentication failed")
        allowed = sorted({m for r in routes for m in (r.methods or ())
                          if r.path.startswith("/api/") and r.matches(request.scope)[0] is Match.PARTIAL})
        if allowed:
            return error_response(405, "method_not_allowed", f"{request.method} is not allowed here",
                                  headers={"Allow": ", ".join(allowed)})
        return error_response(404, "not_found", f"no API route {request.url.path}")

    return [*routes, _ApiFallback("/api/{rest:path}", not_found)]


class _ApiFallback(Route):
    """Every other path under /api/ (even one with a newline, which {rest:path} would not match)."""

    def __init__(self, path: str, endpoint: Any) -> None:
        super().__init__(path, endpoint)
        self.methods = None  # any method: the endpoint answers 405 or 404 itself

    def matches(self, scope: Any) -> tuple[Match, Any]:
        if scope["type"] == "http" and scope["path"].startswith("/api/"):
            return Match.FULL, {"endpoint": self.endpoint, "path_params": {}}
        return Match.NONE, {}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("callbackd")
    except PackageNotFoundError:
        return "0"


def openapi_document() -> dict[str, Any]:
    return openapi(OPS, version=_version())


ROUTE_PROVIDERS.append(api_routes)
__all__ = ["OPS", "api_routes", "openapi_document", "timeline", "can_see_number", "JSONResponse"]
