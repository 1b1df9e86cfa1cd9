"""Segment counting, templates, tokens, opt-out words and routing: pure rules."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from sms.contacts import is_optout
from sms.errors import TemplateError
from sms.segments import count
from sms.senders.base import Route, Router
from sms.templates import Composer
from sms.tokens import hash_token, link_url, new_token


@pytest.mark.parametrize("text,encoding,units,segments", [
    ("", "GSM-7", 0, 0),
    ("a" * 160, "GSM-7", 160, 1),
    ("a" * 161, "GSM-7", 161, 2),
    ("a" * 306, "GSM-7", 306, 2),
    ("a" * 307, "GSM-7", 307, 3),
    ("€" * 80, "GSM-7", 160, 1),            # extension characters count twice
    ("€" * 81, "GSM-7", 162, 2),
    ("a" * 152 + "€", "GSM-7", 154, 1),
    ("a" * 160 + "{", "GSM-7", 162, 2),
    ("你" * 70, "UCS-2", 70, 1),
    ("你" * 71, "UCS-2", 71, 2),
    ("你" * 134, "UCS-2", 134, 2),
    ("你" * 135, "UCS-2", 135, 3),
    ("a" * 69 + "é", "GSM-7", 70, 1),        # é is in the GSM basic set
    ("a" * 69 + "ê", "UCS-2", 70, 1),        # ê is not: the whole text becomes UCS-2
    ("😀" * 35, "UCS-2", 70, 1),             # outside the BMP: a surrogate pair
    ("😀" * 36, "UCS-2", 72, 2),
])
def test_segments(text: str, encoding: str, units: int, segments: int) -> None:
    info = count(text)
    assert (info.encoding, info.units, info.segments) == (encoding, units, segments)


def test_an_escape_pair_is_never_split_across_parts() -> None:
    # 152 plain septets then '€' (2 septets): 154 > 153, so the pair moves to part 2
    assert count("a" * 152 + "€" + "a" * 10).segments == 2
    assert count("a" * 153 + "a" * 153 + "a").segments == 3


def test_templates_render_each_kind_and_language_with_named_fields() -> None:
    c = Composer()
    link = link_url("https://cb.example.gov.cn", "T" * 20)
    zh = c.render("recall", "zh-CN", link=link)
    assert link in zh.body and "12345热线" in zh.body and "回复TD退订" in zh.body
    assert zh.info.encoding == "UCS-2" and zh.info.segments == math.ceil(zh.info.units / 67)
    en = c.render("followup", "en", link=link, request_id="XN-7")
    assert "XN-7" in en.body and "Reply STOP" in en.body and en.info.encoding == "GSM-7"
    assert c.render("recall", None, link=link).lang == "zh-CN"


def test_too_many_segments_is_refused_with_the_count() -> None:
    c = Composer(max_segments=1)
    with pytest.raises(TemplateError, match="2 segments.*at most 1"):
        c.render("recall", "zh-CN", link="https://x.example/r/" + "T" * 20)


def test_template_overrides_are_checked() -> None:
    with pytest.raises(TemplateError, match="unknown fields"):
        Composer(overrides={"recall.zh-CN": "{hotline} {link} {name}"})
    with pytest.raises(TemplateError, match="must contain"):
        Composer(overrides={"recall.en": "hello {hotline}"})
    with pytest.raises(TemplateError, match="keys are"):
        Composer(overrides={"recall.fr": "{link}"})
    c = Composer(overrides={"recall.en": "{hotline}: rate us {link}"}, hotline={"en": "Xining 12345"})
    assert c.render("recall", "en", link="L/r/x").body == "Xining 12345: rate us L/r/x"


def test_tokens_are_long_random_and_stored_hashed() -> None:
    tokens = {new_token() for _ in range(2000)}
    assert len(tokens) == 2000
    tok = next(iter(tokens))
    assert len(tok) == 20 and len(tok) * 6 >= 90                     # 120 bits
    # every URL-safe character shows up: the alphabet is not a narrow one
    assert len(Counter("".join(tokens))) == 64
    assert hash_token(tok) != tok and len(hash_token(tok)) == 64 and hash_token(tok) == hash_token(tok)


@pytest.mark.parametrize("body,expected", [
    ("STOP", True), (" stop ", True), ("Stop.", True), ("退订", True), ("TD", True), ("td", True),
    ("我要退订", True), ("UNSUBSCRIBE", True), ("取消", True),
    ("谢谢", False), ("stop calling me later", False), ("", False), (None, False), ("1", False),
])
def test_opt_out_words(body: str | None, expected: bool) -> None:
    assert is_optout(body) is expected


def test_router_longest_prefix_wins() -> None:
    senders = {"console": object(), "twilio": object(), "aliyun": object()}
    r = Router([Route("", "console"), Route("+86", "aliyun", "zh-CN"), Route("+1", "twilio", "en")],
               senders)  # type: ignore[arg-type]
    assert r.route("+8613800138000").sender == "aliyun"  # type: ignore[union-attr]
    assert r.route("+15558675310").sender == "twilio"  # type: ignore[union-attr]
    assert r.route("+447700900123").sender == "console"  # type: ignore[union-attr]
    assert Router([Route("+86", "aliyun")], senders).route("+1555") is None  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not configured"):
        Router([Route("", "nope")], senders)  # type: ignore[arg-type]


def test_a_reload_rebuilds_the_outbox_with_the_new_templates() -> None:
    """SIGHUP: the SMS component builds a new outbox from the new settings (templates, routes)."""
    import types

    from callback_queue.clock import FakeClock
    from daemon.settings import Settings
    from sms.service import SmsComponent

    jobs: dict[str, object] = {}
    logs: list[str] = []
    old = Settings()
    daemon = types.SimpleNamespace(settings=old, store=None, clock=FakeClock(),
                                   add_job=lambda n, f, s: jobs.update({n: f}),
                                   log=types.SimpleNamespace(warning=lambda *a, **k: None,
                                                             error=lambda *a, **k: logs.append(a[0])))
    comp = SmsComponent(daemon)
    comp.start()
    first = comp.outbox
    new = Settings.model_validate({"sms": {"hotline_name": {"zh-CN": "西宁12345", "en": "Xining 12345"}}})
    comp.reload(new)
    assert comp.outbox is not first and logs == []
    text = str(comp.outbox.composer.render("recall", "zh-CN", link="https://x/r/abc"))
    assert "西宁12345" in text and "西宁12345" not in str(first.composer.render("recall", "zh-CN", link="https://x/r/abc"))
