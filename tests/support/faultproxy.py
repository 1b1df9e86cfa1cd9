"""Link faults on demand: a threaded TCP proxy, and an HTTP front that throttles before forwarding.

`FaultProxy` listens on 127.0.0.1, port 0, and forwards every connection to a target (the test AMI
server, a PostgreSQL). Runtime controls, each taking effect at once on every connection:

- `delay(seconds)`: every chunk waits this long before it is forwarded (per-chunk latency);
- `stall()`: nothing is forwarded any more, in either direction, but every socket stays open (new
  connections are accepted and held too) - a peer that went silent, not one that went away;
- `cut()`: close every current connection now; `cut(after=b"marker", keep=n)` arms a cut *mid-stream*:
  the next chunk from the target that holds `marker` is forwarded up to `n` bytes past the marker's
  start, then every connection is closed (a packet cut in two, deterministically);
- `refuse()`: new connections are accepted and closed at once;
- `resume()`: forward normally again (no stall, no refusal, no delay).

`HttpFaultFront` is a small HTTP/1.1 server in front of an HTTP service (Prism): `fail_next(n, 429,
retry_after=2)` answers the next `n` requests itself (Twilio's error body, a `Retry-After` header), the
rest are forwarded. Every request is recorded with the status it got.

Both shut down cleanly (`stop()`, or use them as context managers): listener closed, every socket
closed, every thread joined.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Conn:
    """One proxied connection: the client's socket and ours to the target."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = client, upstream
        self.closed = False
        self.lock = threading.Lock()

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for s in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


class FaultProxy:
    CHUNK = 65536

    def __init__(self, target_host: str, target_port: int, *, name: str = "proxy") -> None:
        self.target = (target_host, target_port)
        self.name = name
        self.port = 0
        #: connections accepted (refused ones included), connections forwarded, bytes each way
        self.accepted = 0
        self.connections = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.cuts = 0
        self._delay = 0.0
        self._stalled = False
        self._refusing = False
        self._cut_at: tuple[bytes, int] | None = None
        self._conns: list[_Conn] = []
        self._held: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        self.port = s.getsockname()[1]
        self._listener = s
        self._spawn(self._accept, f"{self.name}-accept")
        return self

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        self._close_all()
        with self._cond:
            self._cond.notify_all()
        for t in list(self._threads):
            if t is not threading.current_thread():
                t.join(5)
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise RuntimeError(f"{self.name}: threads still running after stop: {alive}")

    # -- controls -------------------------------------------------------------------------
    def delay(self, seconds: float) -> None:
        """Per-chunk latency from now on (0: none)."""
        with self._cond:
            self._delay = max(0.0, seconds)
            self._cond.notify_all()

    def stall(self) -> None:
        """Stop forwarding in both directions; keep every socket open."""
        with self._cond:
            self._stalled = True
            self._cond.notify_all()

    def refuse(self) -> None:
        """Close new connections at once (current ones go on)."""
        with self._cond:
            self._refusing = True

    def resume(self) -> None:
        """Forward normally again: no stall, no refusal, no delay, no armed cut."""
        with self._cond:
            self._stalled = self._refusing = False
            self._delay = 0.0
            self._cut_at = None
            held, self._held = self._held, []
            self._cond.notify_all()
        for sock in held:  # connections accepted while stalled: connect them now
            self._spawn(self._open, f"{self.name}-open", sock)

    def cut(self, *, after: bytes | None = None, keep: int = 0) -> None:
        """Close every current connection now; with `after`, arm a cut mid-stream instead (see module doc)."""
        if after is not None:
            with self._cond:
                self._cut_at = (after, keep)
            return
        self.cuts += 1
        self._close_all()

    @property
    def active(self) -> int:
        with self._cond:
            return sum(1 for c in self._conns if not c.closed)

    def wait_for(self, pred: Callable[[], Any], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() >= deadline:
                return bool(pred())
            time.sleep(0.02)
        return True

    # -- internals ------------------------------------------------------------------------
    def _spawn(self, fn: Callable[..., None], name: str, *args: Any) -> None:
        t = threading.Thread(target=fn, args=args, name=name, daemon=True)
        with self._cond:
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def _close_all(self) -> None:
        with self._cond:
            conns, self._conns = self._conns, []
            held, self._held = self._held, []
            self._cond.notify_all()
        for c in conns:
            c.close()
        for sock in held:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self._stop.is_set():
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            self.accepted += 1
            with self._cond:
                refusing, stalled = self._refusing, self._stalled
                if stalled and not refusing:
                    self._held.append(sock)
            if refusing:
                with contextlib.suppress(OSError):
                    sock.close()
            elif not stalled:
                self._spawn(self._open, f"{self.name}-open", sock)

    def _open(self, sock: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            with contextlib.suppress(OSError):
                sock.close()
            return
        upstream.settimeout(None)
        for s in (sock, upstream):
            with contextlib.suppress(OSError):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Conn(sock, upstream)
        with self._cond:
            if self._stop.is_set():
                conn.close()
                return
            self._conns.append(conn)
            self.connections += 1
        self._spawn(self._pump, f"{self.name}-up", conn, sock, upstream, False)
        self._spawn(self._pump, f"{self.name}-down", conn, upstream, sock, True)

    def _pump(self, conn: _Conn, src: socket.socket, dst: socket.socket, down: bool) -> None:
        try:
            while not conn.closed:
                data = src.recv(self.CHUNK)
                if not data:
                    break
                with self._cond:
                    while self._stalled and not conn.closed and not self._stop.is_set():
                        self._cond.wait(0.1)
                    delay = self._delay
                    cut = self._cut_at if down else None
                if conn.closed:
                    return
                if delay:
                    time.sleep(delay)
                if cut is not None and cut[0] in data:
                    with self._cond:
                        self._cut_at = None
                    data = data[:data.index(cut[0]) + cut[1]]
                    dst.sendall(data)
                    self.bytes_down += len(data)
                    self.cut()
                    return
                dst.sendall(data)
                if down:
                    self.bytes_down += len(data)
                else:
                    self.bytes_up += len(data)
        except OSError:
            pass
        finally:
            conn.close()


# -- HTTP ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Seen:
    """One request the front answered: when (monotonic), what, and with which status."""

    method: str
    path: str
    status: int
    forwarded: bool
    body: bytes = b""
    at: float = 0.0


_REASONS = {429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


class HttpFaultFront:
    """An HTTP front for a mock API: canned failures first (`fail_next`), then forwarding."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.seen: list[Seen] = []
        self._faults: list[tuple[int, float | str | None, str | None]] = []
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []  # clients' keep-alive connections, closed on stop
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet: the test asserts on `seen`
                pass

            def setup(self) -> None:
                super().setup()
                with front._lock:
                    front._conns.append(self.connection)

            def _any(self) -> None:
                front._handle(self)

            do_GET = do_POST = do_PUT = do_DELETE = _any  # noqa: N815 - http.server's naming

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HttpFaultFront:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="http-fault-front", daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> HttpFaultFront:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:  # handler threads waiting on a keep-alive connection end now
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)

    def fail_next(self, n: int, status: int, *, retry_after: float | str | None = None,
                  path: str | None = None) -> None:
        """Answer the next `n` requests (whose path contains `path`, if given) with `status`; `retry_after`:
        seconds, or a string sent as it is (an HTTP date)."""
        with self._lock:
            self._faults += [(status, retry_after, path)] * n

    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    def statuses(self, path: str = "", method: str | None = None) -> list[int]:
        return [s.status for s in list(self.seen) if path in s.path and method in (None, s.method)]

    def _take_fault(self, path: str) -> tuple[int, float | str | None] | None:
        with self._lock:
            for i, (status, retry_after, where) in enumerate(self._faults):
                if where is None or where in path:
                    del self._faults[i]
                    return status, retry_after
        return None

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        at = time.monotonic()
        headers: list[tuple[str, str]] = []
        fault = self._take_fault(h.path)
        if fault is not None:
            status, retry_after = fault
            reason = _REASONS.get(status, "Error")
            data = json.dumps({"code": 20000 + status, "message": reason, "status": status,
                               "more_info": f"https://www.twilio.com/docs/errors/{20000 + status}"}).encode()
            headers.append(("Content-Type", "application/json"))
            if retry_after is not None:
                headers.append(("Retry-After", retry_after if isinstance(retry_after, str) else f"{retry_after:g}"))
            forwarded = False
        else:
            conn = http.client.HTTPConnection(*self.target, timeout=30)
            try:
                sent = {k: v for k, v in h.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(h.command, h.path, body=body, headers=sent)
                resp = conn.getresponse()
                data = resp.read()
                status, reason, forwarded = resp.status, resp.reason, True
                headers += [(k, v) for k, v in resp.getheaders()
                            if k.lower() not in ("transfer-encoding", "connection", "content-length")]
            except OSError as exc:
                status, reason, forwarded = 502, "Bad Gateway", False
                data = f"front: upstream unreachable: {exc}".encode()
            finally:
                conn.close()
        # recorded before the answer leaves: whoever got the answer finds the request in `seen`
        self.seen.append(Seen(h.command, h.path, status, forwarded, body, at))
        h.send_response(status, reason)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
