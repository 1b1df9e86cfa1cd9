"""The fault proxy's own tests: each control does what the fault suites rely on, against an echo server."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from support.faultproxy import FaultProxy, HttpFaultFront


class Echo:
    """A TCP server that echoes every byte back, upper-cased (so forwarding is visible)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self._conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    @staticmethod
    def _serve(c: socket.socket) -> None:
        try:
            while data := c.recv(4096):
                c.sendall(data.upper())
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()
        for c in self._conns:
            c.close()


@pytest.fixture
def echo() -> Iterator[Echo]:
    e = Echo()
    yield e
    e.close()


def client(port: int, timeout: float = 2.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def test_forwards_both_ways(echo: Echo) -> None:
    with FaultProxy("127.0.0.1", echo.port) as proxy:
        c = client(proxy.port)
        c.sendall(b"hello")
        assert c.recv(100) == b"HELLO"
        # (counted just after the bytes went on)
        assert proxy.wait_for(lambda: proxy.bytes_up == 5 and proxy.bytes_down == 5, 2)
        assert proxy.connections == 1
        c.close()


def test_delay_is_added_to_every_chunk(echo: Echo) -> None:
    with FaultProxy("127.0.0.1", echo.port) as proxy:
        c = client(proxy.port)
        c.sendall(b"a")
        assert c.recv(10) == b"A"
        proxy.delay(0.3)
        t0 = time.monotonic()
        c.sendall(b"b")
        assert c.recv(10) == b"B"
        slow = time.monotonic() - t0
        assert slow >= 0.6          # 0.3 s each way (a lower bound: load only adds to it)
        proxy.delay(0)
        c.sendall(b"c")
        assert c.recv(10) == b"C"
        c.close()


def test_stall_holds_bytes_and_sockets_until_resume(echo: Echo) -> None:
    with FaultProxy("127.0.0.1", echo.port) as proxy:
        c = client(proxy.port)
        c.sendall(b"x")
        assert c.recv(10) == b"X"
        proxy.stall()
        c.sendall(b"stalled")
        c.settimeout(0.5)
        with pytest.raises(TimeoutError):
            c.recv(10)
        late = client(proxy.port)          # a new connection is accepted, but not forwarded yet
        assert proxy.wait_for(lambda: proxy.accepted == 2, 2)
        time.sleep(0.2)
        assert echo.accepted == 1
        proxy.resume()
        c.settimeout(2)
        assert c.recv(10) == b"STALLED"   # nothing was lost: the held chunk goes on
        late.sendall(b"late")
        assert late.recv(10) == b"LATE"
        c.close()
        late.close()


def test_cut_closes_every_connection_and_new_ones_go_through(echo: Echo) -> None:
    with FaultProxy("127.0.0.1", echo.port) as proxy:
        a, b = client(proxy.port), client(proxy.port)
        for s in (a, b):
            s.sendall(b"1")
            assert s.recv(10) == b"1"
        proxy.cut()
        assert a.recv(10) == b"" and b.recv(10) == b""
        c = client(proxy.port)
        c.sendall(b"ok")
        assert c.recv(10) == b"OK"
        for s in (a, b, c):
            s.close()


def test_cut_mid_stream_forwards_part_of_the_marked_chunk(echo: Echo) -> None:
    with FaultProxy("127.0.0.1", echo.port) as proxy:
        c = client(proxy.port)
        c.sendall(b"first\r\n")
        assert c.recv(100) == b"FIRST\r\n"
        proxy.cut(after=b"EVENT: ABANDON", keep=9)
        c.sendall(b"Event: Abandon\r\nUniqueid: 1\r\n\r\n")
        got = b""
        while chunk := c.recv(100):
            got += chunk
        assert got == b"EVENT: AB"    # 9 bytes from the marker on, then the connection is gone
        assert proxy.cuts == 1
        c.close()


def test_refuse_closes_new_connections_only(echo: Echo) -> None:
    with FaultProxy("127.0.0.1", echo.port) as proxy:
        old = client(proxy.port)
        old.sendall(b"a")
        assert old.recv(10) == b"A"
        proxy.refuse()
        new = client(proxy.port)
        assert new.recv(10) == b""            # closed at once, never forwarded
        old.sendall(b"b")
        assert old.recv(10) == b"B"           # the live one goes on
        proxy.resume()
        again = client(proxy.port)
        again.sendall(b"c")
        assert again.recv(10) == b"C"
        assert echo.accepted == 2
        for s in (old, new, again):
            s.close()


def test_stop_closes_everything_and_joins_its_threads(echo: Echo) -> None:
    proxy = FaultProxy("127.0.0.1", echo.port).start()
    c = client(proxy.port)
    c.sendall(b"a")
    assert c.recv(10) == b"A"
    proxy.stall()
    c.sendall(b"held")
    proxy.stop()                               # raises if a thread is left behind
    assert c.recv(10) == b""
    with pytest.raises(OSError):
        client(proxy.port, timeout=0.5)
    c.close()


class _Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        out = b'{"echo": "' + body + b'"}'
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


def test_http_front_throttles_the_first_requests_then_forwards() -> None:
    api = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    try:
        with HttpFaultFront("127.0.0.1", api.server_address[1]) as front:
            front.fail_next(1, 429, retry_after=2)
            front.fail_next(1, 503)
            got = []
            for _ in range(3):
                req = urllib.request.Request(front.url + "/Messages.json", data=b"x", method="POST")
                try:
                    with urllib.request.urlopen(req, timeout=5) as r:
                        got.append((r.status, r.read(), None))
                except urllib.error.HTTPError as e:
                    got.append((e.code, e.read(), e.headers.get("Retry-After")))
            assert [(s, ra) for s, _, ra in got] == [(429, "2"), (503, None), (201, None)]
            assert b'"code": 20429' in got[0][1] and got[2][1] == b'{"echo": "x"}'
            assert front.statuses("/Messages.json") == [429, 503, 201]
            assert [s.forwarded for s in front.seen] == [False, False, True]
    finally:
        api.shutdown()
        api.server_close()
