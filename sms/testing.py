"""Test doubles that ship with the package: a scriptable sender and a stateful fake of Twilio's Messages API.

`FakeTwilioHttpClient` plugs into twilio-python (`Client(..., http_client=...)`) and keeps what was
"sent" in memory, so tests can ask the provider's view — which Prism, being stateless, cannot give.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from twilio.http import HttpClient
from twilio.http.response import Response

from .errors import SmsError
from .senders.base import OutgoingSms, SendResult

_MESSAGES = re.compile(r"/2010-04-01/Accounts/(AC\w+)/Messages\.json$")


@dataclass
class FakeTwilioHttpClient(HttpClient):
    """Messages.json create and list, in memory. `fail_next` holds HTTP statuses to answer first."""

    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    messages: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        import logging

        HttpClient.__init__(self, logging.getLogger("twilio.fake"), False)
        self._lock = threading.Lock()

    def request(self, method: str, url: str, params: Any = None, data: Any = None, headers: Any = None,
                auth: Any = None, timeout: float | None = None, allow_redirects: bool = False) -> Response:
        u = urlsplit(url)
        query = dict(parse_qsl(u.query))
        query.update({k: v for k, v in (params or {}).items() if v is not None})
        with self._lock:
            self.requests.append((method, u.path, dict(data or {}) if method == "POST" else query))
            m = _MESSAGES.search(u.path)
            if m is None:
                return Response(404, json.dumps({"code": 20404, "message": "not found", "status": 404}))
            if self.fail_next:
                status = self.fail_next.pop(0)
                return Response(status, json.dumps({"code": 20000 + status, "message": f"HTTP {status}",
                                                    "status": status}))
            if method == "POST":
                return self._create(m.group(1), dict(data or {}))
            return self._list(query)

    def _create(self, account: str, data: dict[str, Any]) -> Response:
        if not data.get("To"):
            return Response(400, json.dumps({"code": 21604, "message": "A 'To' phone number is required.",
                                             "status": 400}))
        now = self.now()
        msg = {"sid": f"SM{len(self.messages) + 1:032x}", "account_sid": account, "to": data["To"],
               "from": data.get("From"), "body": data.get("Body", ""), "status": "queued",
               "messaging_service_sid": data.get("MessagingServiceSid"),
               "date_created": format_datetime(now, usegmt=True), "date_sent": format_datetime(now, usegmt=True),
               "direction": "outbound-api", "_status_callback": data.get("StatusCallback")}
        self.messages.append(msg)
        return Response(201, json.dumps(msg))

    def _list(self, query: dict[str, Any]) -> Response:
        items = [m for m in reversed(self.messages) if "To" not in query or m["to"] == query["To"]]
        size = int(query.get("PageSize", 50))
        return Response(200, json.dumps({"messages": items[:size], "next_page_uri": None, "page": 0,
                                         "page_size": size, "uri": "/2010-04-01/Accounts/x/Messages.json"}))

    def sent_to(self, number: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["to"] == number]


@dataclass
class ScriptedSender:
    """A sender whose answers are scripted: each call pops one exception (or None for success)."""

    name: str = "fake"
    script: list[SmsError | None] = field(default_factory=list)
    sent: list[OutgoingSms] = field(default_factory=list)
    calls: int = 0

    def send(self, msg: OutgoingSms) -> SendResult:
        self.calls += 1
        step = self.script.pop(0) if self.script else None
        if step is not None:
            raise step
        self.sent.append(msg)
        return SendResult(f"fake-{msg.ref}-{len(self.sent)}", "queued")

    def find_sent(self, msg: OutgoingSms) -> SendResult | None:
        for i, m in enumerate(self.sent, 1):
            if m.ref == msg.ref:
                return SendResult(f"fake-{m.ref}-{i}", "queued")
        return None
