"""Settings of the AMI source (`[[sources.ami]]`) and the AMI dialer (`[dialer.ami]`).

Self-contained on purpose: daemon/settings.py imports `AmiSourceSettings` from here, so nothing
here may import daemon.settings at module level.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from callback_queue.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _read_secret(value: Any, file: Any, credential: str) -> Any:
    """Inline secret, else `secret_file`, else systemd's $CREDENTIALS_DIRECTORY/<credential>."""
    if value:
        return value
    if file:
        try:
            return Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read secret_file {file}: {exc}") from exc
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / credential).is_file():
        return (Path(cred_dir) / credential).read_text(encoding="utf-8").strip()
    return value


class AmiSourceSettings(_Section):
    """One PBX. `name` is the attempts' `system`: use the same as that PBX's queue_log/CDR source."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    host: str = "127.0.0.1"
    port: int = Field(default=5038, ge=1, le=65535)
    username: str = Field(min_length=1)
    secret: SecretStr | None = None
    secret_file: Path | None = Field(default=None, description="a file holding the secret (a credential)")
    filter: bool = Field(default=True, description="ask Asterisk to send only the events detection and "
                                                   "dialing need (Filter action + event mask)")
    socket_timeout: float = Field(default=3.0, gt=0, le=300,
                                  description="seconds; asterisk-ami's own default is 3")
    ping_interval: float = Field(default=1.0, gt=0, le=300,
                                 description="keep-alive Ping when the link was quiet this long (seconds); "
                                             "kept below socket_timeout")
    backoff_initial: float = Field(default=0.5, gt=0, le=60, description="first reconnect delay, seconds")
    backoff_max: float = Field(default=30.0, gt=0, le=3600, description="reconnect delay cap, seconds")
    flush_interval: float = Field(default=0.1, gt=0, le=10, description="store a batch this often (seconds)")
    batch_events: int = Field(default=2000, ge=1, description="...or as soon as this many events wait")

    @model_validator(mode="before")
    @classmethod
    def _secret_from_file(cls, data: Any) -> Any:
        if isinstance(data, dict):
            name = data.get("name", "pbx")
            data = {**data, "secret": _read_secret(data.get("secret"), data.get("secret_file"),
                                                    f"ami_{name}_secret")}
        return data

    @model_validator(mode="after")
    def _check(self) -> AmiSourceSettings:
        if self.secret is None or not self.secret.get_secret_value():
            raise ValueError("secret or secret_file is required")
        return self

    @property
    def effective_ping_interval(self) -> float:
        """Never let the library's socket timeout fire on a quiet link."""
        return min(self.ping_interval, self.socket_timeout / 3)


class AmiDialerSettings(_Section):
    """`[dialer.ami]`: how callbacks are placed through one PBX's AMI link.

    agent-first:   Channel = agent_channel; once the agent answers, the dialplan at
                   context/<citizen number>/1 dials the citizen (its DialEnd is the outcome).
    citizen-first: Channel = citizen_channel with {number}; once the citizen answers, the dialplan
                   at context/agent_exten/1 connects the agent.
    """

    pbx: str = Field(min_length=1, description="the name of a [[sources.ami]] PBX")
    mode: Literal["agent-first", "citizen-first"] = "agent-first"
    agent_channel: str | None = Field(default=None, description="agent-first: e.g. 'PJSIP/200' or "
                                                                "'Local/200@agents'")
    agent_exten: str | None = Field(default=None, description="citizen-first: the extension that reaches "
                                                              "the agent (or the queue) in `context`")
    citizen_channel: str = Field(default="Local/{number}@callback-out",
                                 description="citizen-first: dial string, {number} is the citizen")
    context: str = Field(min_length=1)
    caller_id: str | None = Field(default=None, description="shown to the citizen, e.g. '12345 <12345>'")
    number_format: Literal["e164", "digits", "national"] = "digits"
    ring_timeout_seconds: int = Field(default=30, ge=5, le=600)
    max_concurrent: int = Field(default=2, ge=0, le=1000)
    queue: str | None = Field(default=None, description="pace by this queue's free agents "
                                                        "(QueueSummary Available minus waiting callers)")
    variables: dict[str, str] = Field(default_factory=dict, description="extra channel variables")
    settle_seconds: float = Field(default=2.0, ge=0, le=60, description="wait this long for a DialEnd "
                                                                        "that explains an Originate failure")

    @model_validator(mode="after")
    def _check(self) -> AmiDialerSettings:
        if self.mode == "agent-first" and not self.agent_channel:
            raise ValueError("agent_channel is required in agent-first mode")
        if self.mode == "citizen-first" and not self.agent_exten:
            raise ValueError("agent_exten is required in citizen-first mode")
        if "{number}" not in self.citizen_channel:
            raise ValueError("citizen_channel must contain {number}")
        return self


def dialer_settings(settings: Any) -> AmiDialerSettings:
    """Validate `[dialer.ami]` (DialerSettings keeps it as an extra key) with a clear ConfigError."""
    extra = settings.dialer.model_extra or {}
    raw = extra.get("ami")
    if not isinstance(raw, dict):
        raise ConfigError("dialer.ami: required setting is missing ([dialer] kind = \"ami\" needs a "
                          "[dialer.ami] table with pbx and context)")
    try:
        ami = AmiDialerSettings.model_validate(raw)
    except ValidationError as exc:
        lines = ["invalid configuration:"]
        for err in exc.errors():
            field = ".".join(["dialer", "ami", *(str(p) for p in err["loc"])])
            msg = "unknown setting" if err["type"] == "extra_forbidden" else (
                "required setting is missing" if err["type"] == "missing" else err["msg"])
            lines.append(f"  {field}: {msg.removeprefix('Value error, ')}")
        raise ConfigError("\n".join(lines)) from None
    names = [s.name for s in settings.sources.ami]
    if ami.pbx not in names:
        raise ConfigError(f"dialer.ami.pbx: no [[sources.ami]] is named {ami.pbx!r} (configured: "
                          f"{', '.join(names) or 'none'})")
    return ami
