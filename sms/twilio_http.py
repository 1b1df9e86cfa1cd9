"""A twilio-python HTTP client that sends every request to another base URL (a mock or a staging proxy).

Scheme, host and port are replaced; path and query are kept. `extra_headers` go on every request
(Prism's `Prefer` header in tests). Used when [twilio] api_base_url is set.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twilio.http.http_client import TwilioHttpClient


class RedirectingTwilioHttpClient(TwilioHttpClient):
    def __init__(self, base_url: str, extra_headers: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._base = urlsplit(base_url)
        self.extra_headers = dict(extra_headers or {})

    def request(self, method: str, url: str, params: Any = None, data: Any = None, headers: Any = None,
                auth: Any = None, timeout: float | None = None, allow_redirects: bool = False) -> Any:
        u = urlsplit(url)
        url = urlunsplit((self._base.scheme, self._base.netloc, u.path, u.query, u.fragment))
        headers = {**(headers or {}), **self.extra_headers}
        return super().request(method, url, params=params, data=data, headers=headers, auth=auth,
                               timeout=timeout, allow_redirects=allow_redirects)


def twilio_client(settings: Any, http_client: Any = None) -> Any:
    """A twilio `Client` from [twilio] settings (http_client: tests inject their own)."""
    from twilio.rest import Client

    from callback_queue.errors import ConfigError

    tw = settings.twilio
    if not tw.account_sid or tw.auth_token is None:
        raise ConfigError("[twilio] account_sid and auth_token (or auth_token_file) are needed for Twilio")
    timeout = tw.timeout.total_seconds()
    if http_client is None:
        http_client = (RedirectingTwilioHttpClient(tw.api_base_url, timeout=timeout) if tw.api_base_url
                       else TwilioHttpClient(timeout=timeout))
    return Client(tw.account_sid, tw.auth_token.get_secret_value(), http_client=http_client)
