"""Prism behind a recording HTTP front: the provider's view of Twilio Messaging, outside the daemon.

Prism serves Twilio's OpenAPI spec and checks every request against it, but it is stateless: it
answers every create with the same example SID and every list with the same two example messages.
A crash test needs what a real provider has - a memory of what it accepted - so `RecordingTwilioFront`
sits between the daemon's Twilio client (`[twilio] api_base_url`) and Prism:

- every request is forwarded to Prism first (so it is still validated against the spec);
- a `POST .../Messages.json` Prism accepts (201) is the provider accepting a message: it gets a SID
  of its own and is appended, fsynced, to `log_path` (one JSON line: sid, to, body, time) *before*
  any answer goes back - what reached the provider is on disk even if the client never hears back;
- `GET .../Messages.json` (reconciliation's list) is answered from that memory (newest first,
  filtered by `To` and `DateSent>`, `PageSize` items), in the shape Prism validated;
- faults, drawn from a seeded `random.Random`: the answer to an accepted message is held back for a
  while (`hold`, for a share `p_hold` of them, so a SIGKILL lands between "provider accepted" and
  "provider id stored"), or the
  connection is cut instead of answering (`p_cut`: the client cannot tell whether it was sent), or
  the request is answered 503 by Prism (`p_unavailable`, through `Prefer: code=503`: not accepted).

Prism itself is started by tests/support/prism.py.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parents[2]
_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length", "accept-encoding"}


def read_log(path: Path) -> list[dict[str, Any]]:
    """The messages the provider accepted, in order (the log outlives every process but the test's)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class RecordingTwilioFront:
    def __init__(self, upstream: str, log_path: Path, *, rng: random.Random | None = None,
                 hold: tuple[float, float] = (0.0, 0.0), p_hold: float = 1.0, p_cut: float = 0.0,
                 p_unavailable: float = 0.0, first: tuple[str, ...] = ()) -> None:
        self.upstream = urlsplit(upstream)
        #: faults dealt to the first message POSTs in order ("503", "cut", "ok"), before the drawn ones:
        #: every run exercises each fault however its timing falls
        self.first = list(first)
        self.log_path = log_path
        self.rng = rng or random.Random(0)
        self.hold, self.p_hold, self.p_cut, self.p_unavailable = hold, p_hold, p_cut, p_unavailable
        self.lock = threading.Lock()
        #: (method, path, status, "cut" or "client gone") of every request, in order
        self.requests: list[tuple[str, str, int | str]] = []
        self.accepted: list[dict[str, Any]] = read_log(log_path)
        self.errors: list[BaseException] = []
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"   # one request per connection: a cut is a cut

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                front._handle(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                front._handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="recording-front", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> RecordingTwilioFront:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    # -- one request ----------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        try:
            body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
            path = urlsplit(h.path).path
            is_messages = path.endswith("/Messages.json")
            headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP}
            with self.lock:
                unavailable = method == "POST" and is_messages and self.rng.random() < self.p_unavailable
                cut = self.rng.random() < self.p_cut
                hold = self.rng.uniform(*self.hold) if self.rng.random() < self.p_hold else 0.0
                if method == "POST" and is_messages and self.first:
                    scripted = self.first.pop(0)
                    unavailable, cut = scripted == "503", scripted == "cut"
            if unavailable:
                headers["Prefer"] = "code=503"
            status, reply_headers, data = self._forward(method, h.path, headers, body)
            if is_messages and method == "POST" and status == 201:
                data = self._accept(parse_qs(body.decode("utf-8")), data)
                time.sleep(hold)          # accepted and on disk: the answer takes its time
                if cut:                   # ... or never comes
                    self._note(method, path, "cut")
                    h.close_connection = True
                    with contextlib.suppress(OSError):
                        h.connection.shutdown(socket.SHUT_RDWR)
                    return
            elif is_messages and method == "GET" and status == 200:
                data = self._list(urlsplit(h.path).query, data)
            try:
                h.send_response(status)
                for k, v in reply_headers:
                    if k.lower() not in _HOP:
                        h.send_header(k, v)
                h.send_header("Content-Length", str(len(data)))
                h.end_headers()
                h.wfile.write(data)
                h.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self._note(method, path, "client gone")   # the daemon was killed while waiting
                h.close_connection = True
                return
            self._note(method, path, status)
        except Exception as exc:  # noqa: BLE001 - shown to the test through `errors`
            self.errors.append(exc)
            raise

    def _forward(self, method: str, target: str, headers: dict[str, str], body: bytes
                 ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        try:
            conn.request(method, target, body=body or None, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheaders(), resp.read()
        finally:
            conn.close()

    def _note(self, method: str, path: str, status: int | str) -> None:
        with self.lock:
            self.requests.append((method, path, status))

    def _accept(self, form: dict[str, list[str]], prism_body: bytes) -> bytes:
        """The provider takes the message: its own SID, what was sent, on disk before the answer."""
        msg = json.loads(prism_body)
        now = datetime.now(UTC)
        msg.update(sid="SM" + uuid.uuid4().hex, to=form.get("To", [""])[-1], body=form.get("Body", [""])[-1],
                   status="queued", date_created=format_datetime(now, usegmt=True),
                   date_sent=format_datetime(now, usegmt=True), date_updated=format_datetime(now, usegmt=True))
        msg["from"] = form.get("From", [None])[-1]
        record = {"sid": msg["sid"], "to": msg["to"], "body": msg["body"], "at": now.timestamp()}
        with self.lock:
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self.accepted.append({**record, "message": msg})
        return json.dumps(msg).encode()

    def _list(self, query: str, prism_body: bytes) -> bytes:
        """Reconciliation's list, answered from what was accepted (Prism validated the query)."""
        q = {k: v[-1] for k, v in parse_qs(query).items()}
        since = None
        if q.get("DateSent>"):
            since = datetime.strptime(q["DateSent>"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
        with self.lock:
            items = [a["message"] for a in reversed(self.accepted) if a.get("message")
                     and ("To" not in q or a["to"] == q["To"]) and (since is None or a["at"] >= since)]
        size = int(q.get("PageSize", 50))
        page = json.loads(prism_body)
        page.update(messages=items[:size], next_page_uri=None, page=0, page_size=size)
        return json.dumps(page).encode()
