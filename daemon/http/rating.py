"""The evaluation page a citizen opens from the SMS: works without JavaScript, Chinese first, English too.

GET /r/{token}          the form (or the used / expired / unknown page)
POST /r/{token}         save the rating (one per link), then 303 to the thank-you page
GET /r/{token}/thanks   the thank-you page
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from sms.ratings import Outcome, Rating, Ratings
from sms.tokens import LinkState

from .app import ROUTE_PROVIDERS, Services

if TYPE_CHECKING:
    from jinja2 import Environment

LANGS = ("zh-CN", "en")
TEXTS: dict[str, dict[str, Any]] = {
    "zh-CN": {
        "title": "服务评价", "switch": "English",
        "intro": "感谢您联系{hotline}。请花半分钟评价本次服务，您的评价会直接反馈给承办单位。",
        "q_resolved": "您的诉求是否已解决？",
        "resolved": [("resolved", "已解决"), ("partly", "部分解决"), ("not", "未解决")],
        "q_satisfaction": "您对本次服务是否满意？",
        "satisfaction": [("satisfied", "满意"), ("basic", "基本满意"), ("unsatisfied", "不满意")],
        "comment": "意见或建议（选填）", "submit": "提交评价", "error": "请回答以上两个问题后再提交。",
        "thanks": "感谢您的评价", "thanks_body": "您的评价已提交。我们会根据您的反馈持续改进服务。",
        "used": "您已评价过", "used_body": "此链接已经提交过评价，每个链接只能评价一次。感谢您的参与！",
        "expired": "链接已过期", "expired_body": "此评价链接已超过{days}天有效期，无法再评价。"
                                                     "如需反映问题，请拨打{hotline}。",
        "unknown": "链接无效", "unknown_body": "未找到此评价链接，请检查短信中的链接是否完整。",
    },
    "en": {
        "title": "Rate our service", "switch": "中文",
        "intro": "Thank you for contacting {hotline}. Please take half a minute to rate our service; your rating "
                 "goes straight to the office that handled it.",
        "q_resolved": "Was your request resolved?",
        "resolved": [("resolved", "Resolved"), ("partly", "Partly resolved"), ("not", "Not resolved")],
        "q_satisfaction": "How satisfied are you?",
        "satisfaction": [("satisfied", "Satisfied"), ("basic", "Basically satisfied"),
                         ("unsatisfied", "Unsatisfied")],
        "comment": "Comments (optional)", "submit": "Submit rating",
        "error": "Please answer both questions before submitting.",
        "thanks": "Thank you for your rating", "thanks_body": "Your rating has been saved. We use it to improve "
                                                              "our service.",
        "used": "Already rated", "used_body": "This link has already been used to rate the service (one rating "
                                              "per link). Thank you!",
        "expired": "This link has expired", "expired_body": "Rating links are valid for {days} days and this one "
                                                            "has expired. To raise a problem, please call {hotline}.",
        "unknown": "Link not valid", "unknown_body": "This rating link was not found. Please check that the "
                                                     "whole link from the SMS was opened.",
    },
}


@cache
def _env() -> Environment:
    """The templates, on the first rating page: Jinja2 (about 1.5 MiB) is loaded only when needed."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    return Environment(loader=PackageLoader("daemon.http", "templates"), autoescape=select_autoescape(["html"]))

#: the token is in the URL: no caching, no referrer, no indexing; no scripts at all
HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex",
           "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
           "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                                      "frame-ancestors 'none'; base-uri 'none'"}


def _lang(value: str | None) -> str:
    if value and value.lower().startswith("en"):
        return "en"
    return "zh-CN"


class RatingPages:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.ratings = Ratings(services.store, services.clock)

    def _hotline(self, lang: str) -> str:
        names = self.services.settings.sms.hotline_name
        return names.get(lang) or next(iter(names.values()), "")

    def _render(self, template: str, lang: str, token: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        hotline = self._hotline(lang)
        days = max(1, round(self.services.settings.rating.link_ttl.total_seconds() / 86400))
        t = {k: (v.format(hotline=hotline, days=days) if isinstance(v, str) else v) for k, v in TEXTS[lang].items()}
        other = "en" if lang == "zh-CN" else "zh-CN"
        html = _env().get_template(template).render(
            t=t, lang=lang, hotline=hotline, other_lang=other, action=f"/r/{token}",
            other_lang_url=f"/r/{token}?lang={other}" if ctx.get("page", "form") == "form" else None, **ctx)
        return HTMLResponse(html, status_code=status, headers=HEADERS)

    def _message(self, kind: str, lang: str, token: str, status: int) -> HTMLResponse:
        t = TEXTS[lang]
        hotline = self._hotline(lang)
        days = max(1, round(self.services.settings.rating.link_ttl.total_seconds() / 86400))
        icons = {"thanks": "✓", "used": "✓", "expired": "⌛", "unknown": "?"}
        return self._render("rating/message.html", lang, token, status, page=kind, icon=icons[kind],
                            heading=t[kind], body=t[f"{kind}_body"].format(hotline=hotline, days=days))

    async def show(self, request: Request) -> Response:
        token = request.path_params["token"]
        lang = _lang(request.query_params.get("lang"))
        state, _ = await run_in_threadpool(self.ratings.look, token)
        if state is LinkState.VALID:
            return self._render("rating/form.html", lang, token, form={}, error=False, page="form")
        return self._state_page(state, lang, token)

    def _state_page(self, state: LinkState | Outcome, lang: str, token: str) -> HTMLResponse:
        if state in (LinkState.USED, Outcome.USED):
            return self._message("used", lang, token, 200)
        if state in (LinkState.EXPIRED, Outcome.EXPIRED):
            return self._message("expired", lang, token, 410)
        return self._message("unknown", lang, token, 404)

    async def submit(self, request: Request) -> Response:
        token = request.path_params["token"]
        # no form of ours takes files: max_files=0 refuses an upload (400) before it is spooled to a
        # temporary file nobody would close
        form = await request.form(max_files=0)
        lang = _lang(str(form.get("lang") or request.query_params.get("lang") or ""))
        rating = Rating(resolved=str(form.get("resolved") or ""), satisfaction=str(form.get("satisfaction") or ""),
                        comment=str(form.get("comment") or "")[:2000] or None, lang=lang)
        outcome, _ = await run_in_threadpool(self.ratings.submit, token, rating)
        if outcome is Outcome.SAVED:
            suffix = "?lang=en" if lang == "en" else ""
            return RedirectResponse(f"/r/{token}/thanks{suffix}", status_code=303, headers=HEADERS)
        if outcome is Outcome.INVALID:
            return self._render("rating/form.html", lang, token, 400, form=rating, error=True, page="form")
        resp = self._state_page(outcome, lang, token)
        if outcome is Outcome.USED:
            resp.status_code = 409
        return resp

    async def thanks(self, request: Request) -> Response:
        token = request.path_params["token"]
        lang = _lang(request.query_params.get("lang"))
        state, _ = await run_in_threadpool(self.ratings.look, token)
        if state is LinkState.USED:
            return self._message("thanks", lang, token, 200)
        if state is LinkState.VALID:
            return RedirectResponse(f"/r/{token}", status_code=303, headers=HEADERS)
        return self._state_page(state, lang, token)


def routes(services: Services) -> list[BaseRoute]:
    pages = RatingPages(services)
    return [
        Route("/r/{token}", pages.show, methods=["GET"]),
        Route("/r/{token}", pages.submit, methods=["POST"]),
        Route("/r/{token}/thanks", pages.thanks, methods=["GET"]),
    ]


ROUTE_PROVIDERS.append(routes)
