"""Twilio webhooks, each checked against X-Twilio-Signature (unsigned or wrong: 403).

POST /twilio/sms-status    message status callbacks -> the callback's history, sms_delivered / sms_failed
POST /twilio/sms-inbound   replies: STOP / 退订 put the number on the do-not-contact list
POST /twilio/call-status   call status callbacks of the Twilio dialer -> DialResult
POST /twilio/inbound/status  status callbacks of citizens' calls to the hotline -> attempts (204)
POST /twilio/inbound/queue   <Enqueue action="...">: QueueResult/QueueTime -> attempts (TwiML)
POST /twilio/inbound/dial    <Dial action="...">: DialCallStatus -> attempts (TwiML)
(the inbound ones: daemon/sources/twilio_calls.py; 404 unless [twilio_source] enabled)
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from callback_queue.dialing import DialQueue
from sms.contacts import DoNotContact, is_optout
from sms.delivery import record_status

from ..logs import get_logger
from .app import ROUTE_PROVIDERS, Services

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
log = get_logger("callbackd.twilio")


def public_url(services: Services, request: Request) -> str:
    """The URL Twilio signed: the configured public base (behind a proxy) + path + query."""
    base = services.settings.http.public_url
    if not base:
        return str(request.url)
    url = base.rstrip("/") + request.url.path
    if request.url.query:
        url += "?" + request.url.query
    return url


async def verified_form(services: Services, request: Request) -> dict[str, str] | None:
    """The posted fields if the signature is valid, else None."""
    from twilio.request_validator import RequestValidator

    token = services.settings.twilio.auth_token
    signature = request.headers.get("X-Twilio-Signature")
    # no form of ours takes files: max_files=0 refuses an upload (400) before it is spooled to a
    # temporary file nobody would close
    form = await request.form(max_files=0)
    fields = {k: str(v) for k, v in form.multi_items()}
    if token is None or not signature:
        return None
    multi: dict[str, Any] = {}
    for k, v in form.multi_items():
        multi.setdefault(k, []).append(str(v))
    params = {k: (v if len(v) > 1 else v[0]) for k, v in multi.items()}
    if not RequestValidator(token.get_secret_value()).validate(public_url(services, request), params, signature):
        return None
    return fields


def _forbidden(request: Request) -> Response:
    log.warning("twilio.signature_rejected", path=request.url.path,
                signed=bool(request.headers.get("X-Twilio-Signature")))
    return PlainTextResponse("invalid signature", status_code=403)


def routes(services: Services) -> list[BaseRoute]:
    dnc = DoNotContact(services.store, services.clock)

    async def sms_status(request: Request) -> Response:
        form = await verified_form(services, request)
        if form is None:
            return _forbidden(request)
        sid = form.get("MessageSid") or form.get("SmsSid") or ""
        status = form.get("MessageStatus") or form.get("SmsStatus") or ""
        if not sid or not status:
            return PlainTextResponse("MessageSid and MessageStatus are required", status_code=400)
        found = await run_in_threadpool(record_status, services.store, services.clock, sid, status,
                                        error_code=form.get("ErrorCode") or None)
        if found is None:
            log.info("twilio.sms_status_unknown_message", message_sid=sid, status=status)
        return Response(status_code=204)

    async def sms_inbound(request: Request) -> Response:
        form = await verified_form(services, request)
        if form is None:
            return _forbidden(request)
        number, body = form.get("From", ""), form.get("Body", "")
        if number and is_optout(body):
            added, cancelled = await run_in_threadpool(dnc.add, number, "sms-reply", body.strip()[:40])
            log.info("sms.opt_out", number=number, added=added, cancelled=cancelled)
        return Response(EMPTY_TWIML, media_type="text/xml")

    async def call_status(request: Request) -> Response:
        form = await verified_form(services, request)
        if form is None:
            return _forbidden(request)
        ref = request.query_params.get("ref")
        dialer = services.extra.get("twilio_dialer")
        if dialer is None:
            from ..dialers.twilio import TwilioDialer

            dialer = TwilioDialer(None, DialQueue(services.queue), from_number="", status_url="",
                                  twiml_url="(webhook only)",
                                  machine_detection=services.settings.twilio.machine_detection)
        await run_in_threadpool(dialer.handle_status, form, ref)
        return Response(status_code=204)

    def inbound(kind: str) -> Any:
        from ..sources.twilio_calls import inbound_hook

        return inbound_hook(services, kind, verified_form, _forbidden)

    return [
        Route("/twilio/sms-status", sms_status, methods=["POST"]),
        Route("/twilio/sms-inbound", sms_inbound, methods=["POST"]),
        Route("/twilio/call-status", call_status, methods=["POST"]),
        Route("/twilio/inbound/status", inbound("status"), methods=["POST"]),
        Route("/twilio/inbound/queue", inbound("queue"), methods=["POST"]),
        Route("/twilio/inbound/dial", inbound("dial"), methods=["POST"]),
    ]


ROUTE_PROVIDERS.append(routes)
