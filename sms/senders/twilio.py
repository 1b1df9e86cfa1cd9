"""Twilio Messaging through the official `twilio` client."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ..errors import PermanentSendError, ReconcileError, SendOutcomeUnknown, TransientSendError
from .base import OutgoingSms, SendResult

#: how many recent messages to a number reconciliation looks at
RECONCILE_LIMIT = 20


class TwilioSender:
    name = "twilio"

    def __init__(self, client: Any, *, from_number: str | None = None,
                 messaging_service_sid: str | None = None) -> None:
        if not from_number and not messaging_service_sid:
            raise ValueError("Twilio SMS needs [twilio] from_number or messaging_service_sid")
        self.client = client
        self.from_number = from_number
        self.messaging_service_sid = messaging_service_sid

    def send(self, msg: OutgoingSms) -> SendResult:
        kwargs: dict[str, Any] = {"to": msg.to, "body": msg.body}
        if self.messaging_service_sid:
            kwargs["messaging_service_sid"] = self.messaging_service_sid
        else:
            kwargs["from_"] = self.from_number
        if msg.status_callback:
            kwargs["status_callback"] = msg.status_callback
        try:
            m = self.client.messages.create(**kwargs)
        except Exception as exc:  # noqa: BLE001 - translated at the boundary
            raise translate(exc, self.client) from exc
        return SendResult(m.sid, m.status or "queued")

    def find_sent(self, msg: OutgoingSms) -> SendResult | None:
        """List the messages to that number since the intent (a bounded page) and look for our link token."""
        since = msg.created_at - timedelta(minutes=2) if msg.created_at else None
        kwargs: dict[str, Any] = {"to": msg.to, "page_size": RECONCILE_LIMIT}
        if since is not None:
            kwargs["date_sent_after"] = since
        try:
            found = list(self.client.messages.page(**kwargs))     # one page: the newest RECONCILE_LIMIT
        except Exception as exc:  # noqa: BLE001
            raise ReconcileError(f"Twilio: cannot list messages: {exc}") from exc
        for m in found:
            created = getattr(m, "date_created", None)
            if since is not None and created is not None and created < since:
                continue
            if (msg.token and msg.token in (m.body or "")) or (not msg.token and m.body == msg.body):
                return SendResult(m.sid, m.status or "sent")
        return None


def translate(exc: Exception, client: Any = None) -> Exception:
    """twilio/requests errors -> our transient / permanent / unknown errors, with the provider's reason."""
    import requests
    from twilio.base.exceptions import TwilioException, TwilioRestException

    if isinstance(exc, TwilioRestException):
        reason = f"Twilio {exc.status}/{exc.code}: {exc.msg}"
        detail = _response_detail(client)
        if detail:
            reason += f" ({detail})"
        if exc.status == 429 or exc.status >= 500:
            return TransientSendError(reason, retry_after=retry_after(client))
        return PermanentSendError(reason)
    if isinstance(exc, requests.exceptions.ConnectTimeout | requests.exceptions.SSLError):
        return TransientSendError(f"Twilio: cannot connect: {exc}")
    if isinstance(exc, requests.exceptions.RequestException):
        return SendOutcomeUnknown(f"Twilio: request failed after it may have been sent: {exc}")
    if isinstance(exc, TwilioException):
        return PermanentSendError(f"Twilio: {exc}")
    return SendOutcomeUnknown(f"Twilio: {type(exc).__name__}: {exc}")


def retry_after(client: Any) -> float | None:
    """Seconds the provider asked us to wait (the failed response's Retry-After: seconds or an HTTP date)."""
    resp = getattr(getattr(client, "http_client", None), "_test_only_last_response", None)
    value = (getattr(resp, "headers", None) or {}).get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from datetime import UTC, datetime
    from email.utils import parsedate_to_datetime

    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def _response_detail(client: Any) -> str:
    """The body of the failed response, when it says more than the exception (a mock's validation list)."""
    import json

    resp = getattr(getattr(client, "http_client", None), "_test_only_last_response", None)
    text = getattr(resp, "text", None)
    if not text:
        return ""
    try:
        data = json.loads(text)
    except ValueError:
        return text[:200]
    if isinstance(data, dict):
        if data.get("validation"):
            return "; ".join(f"{'.'.join(map(str, v.get('location', [])))}: {v.get('message')}"
                             for v in data["validation"][:5])
        if data.get("detail"):
            return str(data["detail"])[:200]
    return ""
