"""Mainland-China numbers: Aliyun SMS (dysmsapi 2017-05-25) through its official SDK.

Domestic providers send only approved templates: the message is a template code plus parameters
(the link is one of them); the sign name (签名) is added by the provider. Our sms id travels as
`OutId`, so reconciliation finds a message with QuerySendDetails.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import PermanentSendError, ReconcileError, SendOutcomeUnknown, TransientSendError
from .base import OutgoingSms, SendResult

#: Aliyun answer codes that mean "not now" rather than "never"
TRANSIENT_CODES = frozenset({"isv.BUSINESS_LIMIT_CONTROL", "isp.SYSTEM_ERROR", "isv.DAY_LIMIT_CONTROL",
                             "Throttling", "Throttling.User", "ServiceUnavailable", "InternalError"})
#: template parameters sent (the link and, for follow-ups, the request id)
PARAM_NAMES = ("link", "request_id")


def local_number(e164: str) -> str:
    """Aliyun wants mainland numbers without +86; others as country code + number without '+'."""
    if e164.startswith("+86"):
        return e164[3:]
    return e164.lstrip("+")


class AliyunSender:
    name = "aliyun"

    def __init__(self, *, access_key_id: str, access_key_secret: str, sign_name: str,
                 template_codes: dict[str, str], endpoint: str = "dysmsapi.aliyuncs.com", protocol: str = "https",
                 timeout_ms: int = 10_000) -> None:
        from alibabacloud_dysmsapi20170525.client import Client
        from alibabacloud_tea_openapi.utils_models import Config

        if not template_codes:
            raise ValueError("Aliyun SMS needs [aliyun] template_codes (kind -> template code)")
        self.sign_name = sign_name
        self.template_codes = dict(template_codes)
        self.timeout_ms = timeout_ms
        self.client = Client(Config(access_key_id=access_key_id, access_key_secret=access_key_secret,
                                    endpoint=endpoint, protocol=protocol, read_timeout=timeout_ms,
                                    connect_timeout=timeout_ms))

    def _runtime(self) -> Any:
        from darabonba.runtime import RuntimeOptions

        return RuntimeOptions(read_timeout=self.timeout_ms, connect_timeout=self.timeout_ms)

    def send(self, msg: OutgoingSms) -> SendResult:
        from alibabacloud_dysmsapi20170525 import models

        code = self.template_codes.get(msg.kind)
        if not code:
            raise PermanentSendError(f"Aliyun: no template code for {msg.kind!r} ([aliyun] template_codes)")
        params = {k: msg.params[k] for k in PARAM_NAMES if msg.params.get(k) and msg.params[k] != "-"}
        req = models.SendSmsRequest(phone_numbers=local_number(msg.to), sign_name=self.sign_name,
                                    template_code=code, template_param=json.dumps(params, ensure_ascii=False),
                                    out_id=str(msg.ref))
        try:
            resp = self.client.send_sms_with_options(req, self._runtime())
        except Exception as exc:  # noqa: BLE001 - translated at the boundary
            raise translate(exc) from exc
        body = resp.body
        if body.code != "OK":
            reason = f"Aliyun {body.code}: {body.message}"
            if body.code in TRANSIENT_CODES:
                raise TransientSendError(reason)
            raise PermanentSendError(reason)
        return SendResult(body.biz_id, "OK")

    def find_sent(self, msg: OutgoingSms) -> SendResult | None:
        from alibabacloud_dysmsapi20170525 import models

        if msg.created_at is None:
            raise ReconcileError("Aliyun: the intent's time is needed to query")
        req = models.QuerySendDetailsRequest(phone_number=local_number(msg.to),
                                             send_date=msg.created_at.strftime("%Y%m%d"), page_size=50,
                                             current_page=1)
        try:
            resp = self.client.query_send_details_with_options(req, self._runtime())
        except Exception as exc:  # noqa: BLE001
            raise ReconcileError(f"Aliyun: cannot query sent messages: {exc}") from exc
        body = resp.body
        if body.code != "OK":
            raise ReconcileError(f"Aliyun {body.code}: {body.message}")
        dtos = body.sms_send_detail_dtos.sms_send_detail_dto if body.sms_send_detail_dtos else []
        for d in dtos or []:
            if d.out_id == str(msg.ref):
                return SendResult(getattr(d, "biz_id", None) or f"aliyun-out-{msg.ref}", str(d.send_status))
        return None


def translate(exc: Exception) -> Exception:
    from alibabacloud_tea_openapi.exceptions import ClientException, ServerException, ThrottlingException

    if isinstance(exc, ThrottlingException | ServerException):
        return TransientSendError(f"Aliyun {getattr(exc, 'code', '')}: {getattr(exc, 'message', exc)}")
    if isinstance(exc, ClientException):
        return PermanentSendError(f"Aliyun {getattr(exc, 'code', '')}: {getattr(exc, 'message', exc)}")
    return SendOutcomeUnknown(f"Aliyun: {type(exc).__name__}: {exc}")
