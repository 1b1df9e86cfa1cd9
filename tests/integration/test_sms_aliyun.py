"""The mainland-China sender (Aliyun SMS through its official SDK) against a local fake of the SendSms
endpoint that checks the request: action, numbers, sign name, template code and parameters, and the
ACS3-HMAC-SHA256 signature (recomputed with the secret, not only "present")."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from sms_support import add_callback, callback_state, outbox, sms_rows

from callback_queue.clock import FakeClock
from callback_queue.store import Store
from sms.senders.aliyun import AliyunSender
from sms.senders.base import Route

AK, SECRET = "LTAI-test-key", "test-secret-of-the-key"
SIGN, TEMPLATES = "西宁12345", {"recall": "SMS_480001", "followup": "SMS_480002"}


def acs3_signature(method: str, path: str, query: dict[str, str], headers: dict[str, str], signed: list[str],
                   secret: str) -> str:
    canon_query = "&".join(f"{k}={quote(query[k], safe='~')}" for k in sorted(query))
    canon_headers = "".join(f"{h}:{headers[h].strip()}\n" for h in signed)
    request = "\n".join([method, path or "/", canon_query, canon_headers, ";".join(signed),
                         headers["x-acs-content-sha256"]])
    to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(request.encode()).hexdigest()
    return hmac.new(secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()


class FakeAliyun:
    """SendSms and QuerySendDetails; every request's signature is verified with SECRET."""

    def __init__(self) -> None:
        self.sent: list[dict[str, str]] = []
        self.rejected: list[str] = []
        self.answer_next: list[dict[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, answer = fake.handle(self, body)
                data = json.dumps(answer, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json;charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def _reject(self, why: str) -> tuple[int, dict[str, str]]:
        self.rejected.append(why)
        return 400, {"Code": "IncompleteSignature", "Message": why, "RequestId": str(uuid.uuid4())}

    def handle(self, req: BaseHTTPRequestHandler, body: bytes) -> tuple[int, dict[str, Any]]:
        u = urlsplit(req.path)
        query = dict(parse_qsl(u.query, keep_blank_values=True))
        headers = {k.lower(): v for k, v in req.headers.items()}
        auth = headers.get("authorization", "")
        if not auth.startswith("ACS3-HMAC-SHA256 "):
            return self._reject("no ACS3-HMAC-SHA256 signature")
        parts = dict(p.split("=", 1) for p in auth.removeprefix("ACS3-HMAC-SHA256 ").split(","))
        if parts.get("Credential") != AK:
            return self._reject("unknown access key")
        signed = parts["SignedHeaders"].split(";")
        if not {"host", "x-acs-action", "x-acs-date", "x-acs-signature-nonce"} <= set(signed):
            return self._reject(f"headers not signed: {signed}")
        if headers.get("x-acs-content-sha256") != hashlib.sha256(body).hexdigest():
            return self._reject("payload hash mismatch")
        if acs3_signature("POST", u.path, query, headers, signed, SECRET) != parts.get("Signature"):
            return self._reject("signature does not match")
        if headers.get("x-acs-version") != "2017-05-25":
            return self._reject("wrong API version")
        action = headers.get("x-acs-action")
        if action == "SendSms":
            if self.answer_next:
                return 200, self.answer_next.pop(0)
            self.sent.append({**query, "_action": action})
            return 200, {"Code": "OK", "Message": "OK", "BizId": f"9{len(self.sent):05d}^0",
                         "RequestId": str(uuid.uuid4())}
        if action == "QuerySendDetails":
            rows = [{"PhoneNum": m["PhoneNumbers"], "OutId": m.get("OutId"), "SendStatus": 3,
                     "TemplateCode": m["TemplateCode"], "Content": "…"}
                    for m in self.sent if m["PhoneNumbers"] == query.get("PhoneNumber")]
            return 200, {"Code": "OK", "Message": "OK", "TotalCount": str(len(rows)),
                         "SmsSendDetailDTOs": {"SmsSendDetailDTO": rows}, "RequestId": str(uuid.uuid4())}
        return 400, {"Code": "InvalidAction.NotFound", "Message": f"action {action}"}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def aliyun() -> Iterator[FakeAliyun]:
    fake = FakeAliyun()
    yield fake
    fake.close()


def _sender(fake: FakeAliyun, secret: str = SECRET) -> AliyunSender:
    return AliyunSender(access_key_id=AK, access_key_secret=secret, sign_name=SIGN, template_codes=TEMPLATES,
                        endpoint=fake.endpoint, protocol="http", timeout_ms=5000)


def test_send_sms_request_is_what_aliyun_expects(aliyun: FakeAliyun, store: Store, clock: FakeClock) -> None:
    box = outbox(store, clock, {"aliyun": _sender(aliyun), "console": object()},
                 routes=[Route("+86", "aliyun", "zh-CN"), Route("", "console")])
    recall = add_callback(store, clock.now(), "+8613800138001")
    followup = add_callback(store, clock.now(), "+8613900139002", kind="followup", request_id="XN-2026-77")
    assert box.tick().sent == 2, aliyun.rejected
    assert aliyun.rejected == []
    by_number = {m["PhoneNumbers"]: m for m in aliyun.sent}
    m = by_number["13800138001"]                                   # mainland numbers without +86
    assert m["_action"] == "SendSms" and m["SignName"] == SIGN and m["TemplateCode"] == "SMS_480001"
    params = json.loads(m["TemplateParam"])
    assert set(params) == {"link"} and params["link"].startswith("https://cb.example.gov.cn/r/")
    assert m["OutId"] == str(sms_rows(store, recall)[0].id)
    f = by_number["13900139002"]
    assert f["TemplateCode"] == "SMS_480002"
    assert json.loads(f["TemplateParam"])["request_id"] == "XN-2026-77"
    assert f["OutId"] == str(sms_rows(store, followup)[0].id)
    [row] = sms_rows(store, recall)
    assert row.state == "sent" and row.provider_id == "900001^0" and row.sender == "aliyun"
    assert callback_state(store, recall) == "sms_sent"


def test_a_wrong_secret_is_refused_by_the_fake(aliyun: FakeAliyun, store: Store, clock: FakeClock) -> None:
    box = outbox(store, clock, {"aliyun": _sender(aliyun, secret="not-the-secret")})
    cid = add_callback(store, clock.now(), "+8613800138001")
    assert box.tick().failed == 1
    assert aliyun.rejected == ["signature does not match"] and aliyun.sent == []
    assert "IncompleteSignature" in sms_rows(store, cid)[0].error


def test_provider_codes_transient_then_permanent(aliyun: FakeAliyun, store: Store, clock: FakeClock) -> None:
    aliyun.answer_next = [{"Code": "isv.BUSINESS_LIMIT_CONTROL", "Message": "触发分钟级流控Permits:1"},
                          {"Code": "isv.MOBILE_NUMBER_ILLEGAL", "Message": "非法手机号"}]
    box = outbox(store, clock, {"aliyun": _sender(aliyun)}, backoff=timedelta(seconds=10))
    cid = add_callback(store, clock.now(), "+8613800138001")
    assert box.tick().retried == 1
    clock.advance(10)
    assert box.tick().failed == 1
    [row] = sms_rows(store, cid)
    assert row.state == "failed" and row.error == "Aliyun isv.MOBILE_NUMBER_ILLEGAL: 非法手机号"
    assert callback_state(store, cid) == "sms_failed"


def test_reconcile_finds_the_message_by_out_id(aliyun: FakeAliyun, store: Store, clock: FakeClock) -> None:
    sender = _sender(aliyun)
    box = outbox(store, clock, {"aliyun": sender})
    cid = add_callback(store, clock.now(), "+8613800138001")

    class Crash(BaseException):
        pass

    class CrashAfter:
        name = "aliyun"

        def send(self, msg: Any) -> Any:
            sender.send(msg)
            raise Crash

        def find_sent(self, msg: Any) -> Any:
            return sender.find_sent(msg)

    with pytest.raises(Crash):
        outbox(store, clock, {"aliyun": CrashAfter()}).tick()
    clock.advance(timedelta(minutes=6))
    assert box.tick().reconciled == 1
    assert len(aliyun.sent) == 1 and aliyun.rejected == []
    assert sms_rows(store, cid)[0].state == "sent"
