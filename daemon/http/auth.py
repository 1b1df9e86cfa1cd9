"""Who is asking: bearer tokens for the API, session cookies for the console; JSON errors.

Authentication is applied per route by the wrappers here (`api_endpoint`, and the
console's `page`), not by a global middleware, so the public routes other features
serve (/r/... rating page, /twilio/... webhooks, /healthz, /readyz) stay public
without a list of exceptions. tests/integration/test_auth.py walks every /api and
/console route and checks that each one refuses a request without credentials.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from callback_queue.errors import (
    CallbackdError,
    InvalidTransition,
    LeaseLost,
    NotFound,
    StoreError,
)
from callback_queue.users import Role, User, Users

from ..logs import get_logger
from .app import Services

SESSION_COOKIE = "callbackd_session"
log = get_logger("callbackd.http")

#: domain errors -> (HTTP status, machine-readable code)
ERROR_STATUS: list[tuple[type[Exception], int, str]] = [
    (NotFound, 404, "not_found"),
    (LeaseLost, 409, "claimed_by_someone_else"),
    (InvalidTransition, 409, "invalid_transition"),
    (StoreError, 503, "store_unavailable"),
]


class HttpError(Exception):
    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details, self.headers = status, code, message, details, headers


def error_response(status: int, code: str, message: str, details: list[dict[str, Any]] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": {"status": status, "code": code, "message": message}}
    if details:
        body["error"]["details"] = details
    return JSONResponse(body, status_code=status, headers=headers)


def unauthorized(message: str = "a bearer token is needed: Authorization: Bearer <token>") -> HttpError:
    return HttpError(401, "unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="callbackd"'})


def users(services: Services) -> Users:
    return Users(services.store, services.clock)


def bearer_user(services: Services, request: Request) -> User:
    """The user a request's bearer token belongs to, or a 401."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise unauthorized()
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("the Authorization header must be 'Bearer <token>'")
    user = users(services).by_token(token.strip())
    if user is None:
        raise unauthorized("the token is not valid (unknown, revoked, or its user is disabled)")
    return user


def require(user: User, role: Role) -> None:
    if role is Role.ADMIN and not user.is_admin:
        raise HttpError(403, "forbidden", f"{user.name} is an operator; this needs an admin")


def _validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"field": ".".join(str(p) for p in e["loc"]) or "(body)", "message": e["msg"]} for e in exc.errors()]


@dataclass
class Call:
    """One API request, authenticated and parsed, as handlers see it."""

    services: Services
    user: User
    request: Request
    path: dict[str, Any]
    query: Any = None
    body: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def _is_list(annotation: Any) -> bool:
    if typing.get_origin(annotation) is list:
        return True
    return any(typing.get_origin(a) is list for a in typing.get_args(annotation))


def parse_query(model: type[BaseModel], request: Request) -> Any:
    data: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        values = request.query_params.getlist(name)
        if not values:
            continue
        data[name] = values if _is_list(info.annotation) else values[-1]
    unknown = sorted(set(request.query_params) - set(model.model_fields))
    if unknown:
        raise HttpError(400, "bad_request", f"unknown query parameter(s): {', '.join(unknown)}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise HttpError(400, "bad_request", "invalid query parameters", _validation_details(exc)) from None


def parse_body(model: type[BaseModel], raw: bytes) -> Any:
    if not raw.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(400, "bad_request", f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise HttpError(422, "invalid_body", "the body must be a JSON object")
    try:
        return model.model_validate_json(raw if raw.strip() else b"{}")
    except ValidationError as exc:
        raise HttpError(422, "invalid_body", "the body is not valid", _validation_details(exc)) from None


def translate(exc: Exception) -> JSONResponse | None:
    if isinstance(exc, HttpError):
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)
    for cls, status, code in ERROR_STATUS:
        if isinstance(exc, cls):
            return error_response(status, code, str(exc))
    if isinstance(exc, ValueError | CallbackdError):
        return error_response(400, "bad_request", str(exc))
    return None


def api_endpoint(handler: Callable[[Call], Any], *, role: Role, query: type[BaseModel] | None = None,
                 body: type[BaseModel] | None = None, status: int = 200) -> Callable[[Request], Any]:
    """Wrap a synchronous handler: authenticate, authorize, parse, run in a thread, answer JSON."""

    async def endpoint(request: Request) -> Response:
        services: Services = request.app.state.services
        try:
            raw = await request.body() if body is not None else b""

            def run() -> Any:  # one trip to the thread pool: authenticate, authorize, parse, handle
                user = bearer_user(services, request)
                require(user, role)
                call = Call(services, user, request, dict(request.path_params))
                if query is not None:
                    call.query = parse_query(query, request)
                if body is not None:
                    call.body = parse_body(body, raw)
                return handler(call)

            result = await run_in_threadpool(run)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error
            resp = translate(exc)
            if resp is None:
                log.error("api.failed", path=request.url.path, error=f"{type(exc).__name__}: {exc}")
                return error_response(500, "internal_error", "the request failed; the error is in the daemon's log")
            return resp
        if isinstance(result, Response):
            return result
        return JSONResponse(result, status_code=status)

    endpoint.__name__ = handler.__name__
    return endpoint
