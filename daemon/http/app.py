"""The Starlette application and the thread that serves it with uvicorn.

Feature areas add their routes through `RouteProvider`s (a function that takes
the `Services` and returns routes), registered in `create_app`; each lives in a
module of its own under daemon/http/.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from callback_queue.clock import Clock
from callback_queue.queue import CallbackQueue
from callback_queue.store import Store

from ..logs import get_logger
from ..settings import Settings


@dataclass
class Services:
    """What request handlers may use; built once by the daemon (or a test)."""

    settings: Settings
    store: Store
    clock: Clock
    queue: CallbackQueue
    #: name -> callable returning (ok, detail) for /readyz
    checks: dict[str, Callable[[], tuple[bool, str]]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


RouteProvider = Callable[[Services], list[BaseRoute]]
#: feature modules append their route providers here at import time
ROUTE_PROVIDERS: list[RouteProvider] = []


def create_app(services: Services, providers: list[RouteProvider] | None = None) -> Starlette:
    routes: list[BaseRoute] = [
        Route("/healthz", _healthz, methods=["GET"]),
        Route("/readyz", _readyz, methods=["GET"]),
    ]
    for provider in (ROUTE_PROVIDERS if providers is None else providers):
        routes.extend(provider(services))
    app = Starlette(routes=routes)
    app.state.services = services
    return app


async def _healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _readyz(request: Request) -> Response:
    services: Services = request.app.state.services
    results: dict[str, Any] = {}
    ok = True
    try:
        with services.store.read() as conn:
            conn.exec_driver_sql("SELECT 1")
        results["database"] = {"ok": True}
    except Exception as exc:  # noqa: BLE001 - readiness reports any failure
        ok = False
        results["database"] = {"ok": False, "detail": str(exc)}
    for name, check in services.checks.items():
        try:
            good, detail = check()
        except Exception as exc:  # noqa: BLE001
            good, detail = False, str(exc)
        ok = ok and good
        results[name] = {"ok": good, "detail": detail}
    return JSONResponse({"status": "ok" if ok else "not ready", "checks": results}, status_code=200 if ok else 503)


class HttpServer:
    """uvicorn in a thread of the daemon (no signal handlers of its own: the daemon owns those)."""

    name = "http"

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        import uvicorn

        self.config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                     lifespan="off", server_header=False)
        self.server = uvicorn.Server(self.config)
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.server.run, name="http", daemon=True)
        self.log = get_logger("callbackd.http")

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"HTTP server did not start on {self.config.host}:{self.config.port}")
            time.sleep(0.02)
        self.log.info("http.listening", host=self.config.host, port=self.port)

    @property
    def port(self) -> int:
        for server in getattr(self.server, "servers", []):
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self.config.port

    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
