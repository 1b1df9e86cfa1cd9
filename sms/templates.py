"""SMS texts per kind (recall, followup) and language (zh-CN, en), with named fields.

Fields: {hotline}, {link}, {optout} (the opt-out word for that language), {request_id} (follow-ups).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any

from .errors import TemplateError
from .segments import SegmentInfo, count

KINDS = ("recall", "followup")
LANGUAGES = ("zh-CN", "en")
FIELDS = frozenset({"hotline", "link", "optout", "request_id"})

DEFAULTS: dict[str, str] = {
    "recall.zh-CN": "【{hotline}】您好，您多次来电未能接通，我们回电也未能联系上您。请对本次服务评价：{link} "
                    "回复{optout}退订",
    "followup.zh-CN": "【{hotline}】您好，您的诉求（编号{request_id}）已办结，回访未能接通。请评价办理结果：{link} "
                      "回复{optout}退订",
    "recall.en": "{hotline}: we called you back after your calls but could not reach you. Please rate our "
                 "service: {link} Reply {optout} to opt out",
    "followup.en": "{hotline}: your request {request_id} is closed; we could not reach you by phone. Please rate "
                   "how it was handled: {link} Reply {optout} to opt out",
}


@dataclass(frozen=True, slots=True)
class Rendered:
    kind: str
    lang: str
    body: str
    info: SegmentInfo
    params: dict[str, str]


@dataclass(frozen=True)
class Composer:
    hotline: dict[str, str] = field(default_factory=lambda: {"zh-CN": "12345热线", "en": "12345 Hotline"})
    default_lang: str = "zh-CN"
    optout_words: dict[str, str] = field(default_factory=lambda: {"zh-CN": "TD", "en": "STOP"})
    max_segments: int = 3
    overrides: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, text in self.overrides.items():
            check_key(key)
            check(key, text)

    def template(self, kind: str, lang: str) -> str:
        key = f"{kind}.{lang}"
        if key in self.overrides:
            return self.overrides[key]
        if key not in DEFAULTS:
            raise TemplateError(f"no template for kind {kind!r} in language {lang!r}")
        return DEFAULTS[key]

    def render(self, kind: str, lang: str | None, *, link: str, request_id: str | None = None) -> Rendered:
        lang = lang or self.default_lang
        hotline = self.hotline.get(lang) or next(iter(self.hotline.values()), "")
        params = {"hotline": hotline, "link": link, "optout": self.optout_words.get(lang, "STOP"),
                  "request_id": request_id or "-"}
        body = self.template(kind, lang).format(**params)
        info = count(body)
        if info.segments > self.max_segments:
            raise TemplateError(f"the {kind}.{lang} SMS takes {info.segments} segments ({info.describe()}); "
                                f"at most {self.max_segments} are allowed ([sms] max_segments)")
        return Rendered(kind, lang, body, info, params)


def check_key(key: str) -> None:
    """A template key is <kind>.<lang> of a known kind and language."""
    kind, _, lang = key.partition(".")
    if kind not in KINDS or lang not in LANGUAGES:
        raise TemplateError(f"template {key!r}: keys are <kind>.<lang> with kind in {KINDS}, lang in {LANGUAGES}")


def problems(templates: dict[str, str]) -> list[str]:
    """Everything wrong with a set of configured templates, one message per template at fault (the checks
    `sms preview` and the daemon make, so `config check` names them all at once)."""
    out = []
    for key, text in templates.items():
        try:
            check_key(key)
            check(key, text)
        except TemplateError as exc:
            out.append(str(exc))
    return out


def check(key: str, text: str) -> None:
    """A template may use only the known fields, and must carry the link."""
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as exc:
        raise TemplateError(f"template {key!r} is malformed: {exc}") from exc
    unknown = names - FIELDS
    if unknown:
        raise TemplateError(f"template {key!r} uses unknown fields {sorted(unknown)}; known: {sorted(FIELDS)}")
    if "link" not in names:
        raise TemplateError(f"template {key!r} must contain {{link}}")


def composer_from(settings: Any) -> Composer:
    s = settings.sms
    return Composer(hotline=dict(s.hotline_name), default_lang=s.language, optout_words=dict(s.optout_words),
                    max_segments=s.max_segments, overrides=dict(s.templates))
