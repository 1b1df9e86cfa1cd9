"""Imported by the daemon (FEATURE_MODULES): registers the SMS outbox component and the HTTP routes."""

from __future__ import annotations

from typing import Any

from daemon.app import register_component
from daemon.http import rating, twilio_hooks  # noqa: F401  (they register their route providers)


@register_component
def sms_component(daemon: Any) -> Any:
    if not daemon.settings.sms.enabled:
        return None
    from .service import SmsComponent

    return SmsComponent(daemon)
