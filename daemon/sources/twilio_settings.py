"""`[twilio_source]`: citizens' calls to the hotline's Twilio number(s) as a call-log source.

Self-contained on purpose: daemon/settings.py imports `TwilioSourceSettings` from here, so nothing
here may import daemon.settings at module level. Credentials come from the `[twilio]` section.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, field_validator, model_validator


def _duration(v: Any) -> timedelta:
    from daemon.settings import parse_duration

    return parse_duration(v)


def _fmt(v: timedelta) -> str:
    from daemon.settings import format_duration

    return format_duration(v)


Duration = Annotated[timedelta, BeforeValidator(_duration), PlainSerializer(_fmt, when_used="json")]
_E164 = re.compile(r"^\+[1-9]\d{5,14}$")


class TwilioSourceSettings(BaseModel):
    """Inbound calls to the hotline's Twilio numbers: status/Enqueue/Dial webhooks and a catch-up poll."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=False, description="accept the /twilio/inbound/* webhooks and poll the call list")
    numbers: list[str] = Field(
        default_factory=list, description="the hotline's Twilio numbers (E.164); calls to other numbers are ignored"
    )
    poll_interval: Duration = Field(
        default=timedelta(minutes=5), description="how often the call list is read to catch up on missed webhooks"
    )
    lookback: Duration = Field(default=timedelta(hours=24), description="how far back the first poll reads")
    max_calls: int = Field(default=1000, ge=1, le=100_000,
                           description="calls read per number and poll (a warning when reached)")
    completed_means_answered: bool = Field(
        default=False,
        description="a 'completed' call without a queue/dial result counts as connected "
                    "(only if the TwiML connects callers straight to a person)",
    )
    answered_min_seconds: int = Field(
        default=60, ge=0, le=86_400,
        description="otherwise: a completed call this long counts as connected, a shorter one as an abandon",
    )
    action_twiml: str = Field(
        default='<?xml version="1.0" encoding="UTF-8"?><Response></Response>',
        description="TwiML answered to the Enqueue/Dial action requests: what the caller gets next "
                    "(the default ends the call)",
    )

    @field_validator("numbers")
    @classmethod
    def _numbers(cls, v: list[str]) -> list[str]:
        bad = [n for n in v if not isinstance(n, str) or not _E164.match(n)]
        if bad:
            raise ValueError(f"numbers must be E.164 such as '+861012345678', not {bad}")
        return v

    @field_validator("action_twiml")
    @classmethod
    def _twiml(cls, v: str) -> str:
        if "<Response" not in v:
            raise ValueError("action_twiml must be a TwiML document (<Response>...</Response>)")
        return v

    @model_validator(mode="after")
    def _check(self) -> TwilioSourceSettings:
        if self.enabled and not self.numbers:
            raise ValueError("numbers: list the hotline's Twilio numbers when the source is enabled")
        if self.poll_interval < timedelta(seconds=10):
            raise ValueError("poll_interval must be at least 10s")
        return self
