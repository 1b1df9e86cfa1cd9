"""Who is asking: bearer tokens for the API, session cookies for the console; JSON errors.

Authentication is applied per route by the wrappers here (`api_endpoint`, and the
console's `page`), not by a global middleware, so the public routes other features
serve (/r/... rating page, /twilio/... webhooks, /healthz, /readyz) stay public
without a list of exceptions. tests/integration/test_auth.py walks every /api and
/console route and checks that each one refuses a request without credentials.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import typing
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from callback_queue import users as _users
from callback_queue.errors import (
    CallbackdError,
    InvalidTransition,
    LeaseLost,
    NotFound,
    StoreError,
)
from callback_queue.users import Role, User, Users, digest

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


class TokenCache:
    """Bearer tokens looked up lately -> their user, reused for `[console] token_cache` seconds: a client
    that sends many requests costs one lookup (a pool checkout and a query) per period, not one per request.
    Only valid tokens are kept, by digest; the time is monotonic (a cache, not a rule of the domain). A user
    disabled in this process empties it at once (`callback_queue.users.revocations`)."""

    def __init__(self, max_entries: int = 10_000, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.monotonic = monotonic
        self._entries: dict[str, tuple[float, User]] = {}
        self._revocations = _users.revocations
        self._lock = threading.Lock()

    def get(self, key: str) -> User | None:
        with self._lock:
            if self._revocations != _users.revocations:
                self._entries.clear()
                self._revocations = _users.revocations
            hit = self._entries.get(key)
            if hit is None:
                return None
            if hit[0] <= self.monotonic():
                del self._entries[key]
                return None
            return hit[1]

    def put(self, key: str, user: User, ttl: float, revocations: int) -> None:
        with self._lock:
            if revocations != _users.revocations:
                return  # a user was disabled while this lookup ran: it may be stale already
            if len(self._entries) >= self.max_entries:
                now = self.monotonic()
                self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
            self._entries[key] = (self.monotonic() + ttl, user)


def token_cache(services: Services) -> TokenCache:
    cache = services.extra.get("token_cache")
    if cache is None:
        cache = services.extra.setdefault("token_cache", TokenCache())
    return cache  # type: ignore[no-any-return]


def bearer_user(services: Services, request: Request) -> User:
    """The user a request's bearer token belongs to, or a 401."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise unauthorized()
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise unauthorized("the Authorization header must be 'Bearer <token>'")
    ttl = services.settings.console.token_cache.total_seconds()
    cache, key = token_cache(services), digest(token)
    user = cache.get(key) if ttl > 0 else None
    if user is None:
        seen = _users.revocations
        user = users(services).by_token(token)
        if user is None:
            raise unauthorized("the token is not valid (unknown, revoked, or its user is disabled)")
        if ttl > 0:
            cache.put(key, user, ttl, seen)
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


def handler_limiter(services: Services) -> anyio.CapacityLimiter:
    """How many API handlers run at once: as many as the store's pool keeps connections. More would
    take connections beyond the pool, which are closed when given back and opened again for the next
    request (a PostgreSQL backend started per request under load); the others wait their turn here."""
    loop = asyncio.get_running_loop()  # a limiter belongs to one event loop (tests start several)
    limiters: weakref.WeakKeyDictionary[Any, anyio.CapacityLimiter] = services.extra.setdefault(
        "handler_limiters", weakref.WeakKeyDictionary())
    limiter = limiters.get(loop)
    if limiter is None:
        size = getattr(services.store.engine.pool, "size", None)
        limiter = limiters.setdefault(loop, anyio.CapacityLimiter(max(2, size()) if callable(size) else 40))
    return limiter


def _masked_path(path: str) -> str:
    """A path with any phone number in it masked (DELETE /api/do-not-contact/{number})."""
    import re

    from callback_queue.numbers import mask

    return re.sub(r"\+?\d{7,}", lambda m: mask(m.group(0)), path)


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
                out = handler(call)
                if request.method != "GET":  # who changed what (the queue logs each callback's change itself)
                    log.info("api.action", user=user.name, role=user.role.value, method=request.method,
                             action=handler.__name__, path=_masked_path(request.url.path))
                return out

            result = await anyio.to_thread.run_sync(run, limiter=handler_limiter(services))
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
