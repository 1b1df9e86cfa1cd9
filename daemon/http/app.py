"""The Starlette application and the thread that serves it with uvicorn.

Feature areas add their routes through `RouteProvider`s (a function that takes
the `Services` and returns routes), registered in `create_app`; each lives in a
module of its own under daemon/http/.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import socket
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
from callback_queue.errors import ConfigError
from callback_queue.queue import CallbackQueue
from callback_queue.store import Store

from ..app import register_component
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


def _wire_daemon(daemon: Any) -> None:
    """What the HTTP layer reports about the daemon it runs in: its health verdict (/healthz) and whether
    it leads (/metrics). A component builder that adds no component."""
    daemon.services.extra["health"] = daemon.healthy
    daemon.services.extra["leader"] = lambda: daemon.leader.is_leader
    daemon.services.extra["instance"] = daemon.leader.name


register_component(_wire_daemon)

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
    # catch-alls (`fallback = True`: every other path under /console/) after every provider's own routes
    routes.sort(key=lambda r: bool(getattr(r, "fallback", False)))
    app = Starlette(routes=routes)
    app.state.services = services
    return app


async def _healthz(request: Request) -> Response:
    """The daemon's own verdict (the one its heartbeat supervisor logs as daemon.unhealthy and pings the
    watchdog on): 503 while it is unhealthy. Without a daemon (a test's app) the process is alive: 200."""
    services: Services = request.app.state.services
    verdict = services.extra.get("health")
    if verdict is None:
        return JSONResponse({"status": "ok"})
    ok, why = verdict()
    return JSONResponse({"status": "ok" if ok else "unhealthy", "reason": why}, status_code=200 if ok else 503)


#: how long /readyz waits for any one check (the database's included) before it counts it as failing
READY_DEADLINE = 2.0


class _Probes:
    """Readiness checks run in threads of their own, one at a time per check: a check that does not answer
    within `READY_DEADLINE` fails this request, and the requests after it wait for the same run instead of
    starting more (a silent database ties up one thread, which its own bounds end, not one per probe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, concurrent.futures.Future[tuple[bool, str]]] = {}

    def start(self, name: str, check: Callable[[], tuple[bool, str]]) -> concurrent.futures.Future[tuple[bool, str]]:
        with self._lock:
            fut = self._running.get(name)
            if fut is not None and not fut.done():
                return fut
            fut = self._running[name] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(check())
            except Exception as exc:  # noqa: BLE001 - readiness reports any failure
                fut.set_result((False, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__))

        threading.Thread(target=run, name=f"readyz:{name}", daemon=True).start()
        return fut


def _database_check(services: Services) -> Callable[[], tuple[bool, str]]:
    def check() -> tuple[bool, str]:
        with services.store.read() as conn:
            conn.exec_driver_sql("SELECT 1")
        failed = services.store.write_outage
        if failed is not None:  # reads work, writes do not (a full disk): not ready
            return False, f"the last write failed: {failed}"
        return True, "ok"

    return check


async def _readyz(request: Request) -> Response:
    services: Services = request.app.state.services
    probes = services.extra.setdefault("readyz_probes", _Probes())
    checks = {"database": _database_check(services), **services.checks}
    futures = {name: probes.start(name, check) for name, check in checks.items()}
    await asyncio.wait([asyncio.wrap_future(f) for f in futures.values()], timeout=READY_DEADLINE)
    results: dict[str, Any] = {}
    for name, fut in futures.items():
        if fut.done():
            good, detail = fut.result()
        else:
            good, detail = False, f"no answer within {READY_DEADLINE:g} s"
        results[name] = {"ok": good} if good and name == "database" else {"ok": good, "detail": detail}
    ok = all(r["ok"] for r in results.values())
    return JSONResponse({"status": "ok" if ok else "not ready", "checks": results}, status_code=200 if ok else 503)


class HttpServer:
    """uvicorn in a thread of the daemon (no signal handlers of its own: the daemon owns those).

    The socket is bound when it is made, in the caller's thread, so a port that cannot be had is one ConfigError
    (exit 78 under `callbackd run`) instead of uvicorn's own error line and a dead thread; uvicorn logs through the
    standard library, whose records `daemon.logs` sends through structlog (JSON lines off a terminal).
    """

    name = "http"

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        import uvicorn

        _uvicorn_logs_to_root()
        self.config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                     lifespan="off", server_header=False, log_config=None)
        self.server = uvicorn.Server(self.config)
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        # bound now, before the daemon starts anything: a port that cannot be had stops it before its sources
        # and jobs start (and stop again)
        self._sockets: list[socket.socket] = [listen(host, port)]
        self.thread = threading.Thread(target=lambda: self.server.run(sockets=self._sockets), name="http",
                                       daemon=True)
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
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        for sock in self._sockets:
            sock.close()  # uvicorn closed it if it served; not if it never started


#: why a listening socket cannot be had, and which setting to change
_LISTEN_ERRORS = {
    errno.EADDRINUSE: ("address already in use", "change [http] port (or stop what holds it)"),
    errno.EACCES: ("permission denied", "choose an [http] port above 1023 (or give callbackd the right to bind)"),
    errno.EADDRNOTAVAIL: ("no such address on this host", "change [http] host"),
}


def listen(host: str, port: int) -> socket.socket:
    """A bound TCP socket for uvicorn; ConfigError naming the address and the setting to change if it cannot be."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart past TIME_WAIT
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if isinstance(exc, socket.gaierror):
            why, fix = "unknown host", "change [http] host"
        else:
            why, fix = _LISTEN_ERRORS.get(exc.errno or 0, (exc.strerror or str(exc), "check the [http] settings"))
        raise ConfigError(f"cannot listen on {host}:{port}: {why} - {fix}") from None
    return sock


def _uvicorn_logs_to_root() -> None:
    """uvicorn's loggers with no handlers of their own: their records reach the root logger, which
    `daemon.logs.configure` hands to structlog (a process that configured uvicorn's logging before - a
    `uvicorn.run` in a test, say - would otherwise keep printing its plain lines)."""
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True
