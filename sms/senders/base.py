"""The sender port: send one message; find out whether a message was sent (reconciliation)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True, slots=True)
class OutgoingSms:
    ref: int                 # our sms_messages.id: providers that accept an external id carry it
    to: str                  # E.164
    body: str
    kind: str = "recall"
    lang: str = "zh-CN"
    params: dict[str, str] = field(default_factory=dict)   # template parameters (template providers)
    token: str = ""          # the link token inside the body: what reconciliation looks for
    created_at: datetime | None = None                      # when the intent was stored
    status_callback: str | None = None


@dataclass(frozen=True, slots=True)
class SendResult:
    provider_id: str
    status: str              # the provider's word: queued, accepted, OK, ...


class Sender(Protocol):
    name: str

    def send(self, msg: OutgoingSms) -> SendResult:
        """Send once. Raise TransientSendError (not sent, retry), PermanentSendError (not sent, give up)
        or SendOutcomeUnknown (may have been sent: reconcile before sending again)."""

    def find_sent(self, msg: OutgoingSms) -> SendResult | None:
        """Ask the provider whether `msg` was already sent (after a crash); ReconcileError if it cannot tell."""


@dataclass(frozen=True, slots=True)
class Route:
    prefix: str
    sender: str
    language: str | None = None


class Router:
    """Longest matching number prefix wins; the '' prefix is the default."""

    def __init__(self, routes: Sequence[Route], senders: dict[str, Sender]) -> None:
        missing = sorted({r.sender for r in routes} - set(senders))
        if missing:
            raise ValueError(f"routes name senders that are not configured: {missing}")
        self.routes = sorted(routes, key=lambda r: len(r.prefix), reverse=True)
        self.senders = senders

    def route(self, number: str) -> Route | None:
        for r in self.routes:
            if number.startswith(r.prefix):
                return r
        return None

    def sender(self, name: str) -> Sender:
        return self.senders[name]
