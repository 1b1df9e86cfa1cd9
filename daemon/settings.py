"""Settings: one TOML file, then CALLBACKD_* environment overrides; validated at start.

A bad configuration fails before anything starts, naming the field and the reason.
"""

from __future__ import annotations

import os
import re
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from callback_queue.attempts import FAILURE_REASONS
from callback_queue.errors import ConfigError
from daemon.ami.settings import AmiSourceSettings

ENV_PREFIX = "CALLBACKD_"
DEFAULT_PATHS = (Path("/etc/callbackd/callbackd.toml"), Path("config/callbackd.toml"))
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: Any) -> timedelta:
    """'24h', '15m', '1h30m', '0.5s' or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("a duration such as '24h', '15m' or '30s' is needed")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return _seconds(value, value)
    if not isinstance(value, str):
        raise ValueError("a duration such as '24h', '15m' or '30s' is needed")
    text = value.strip().lower().replace(" ", "")
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not text or pos != len(text):
        raise ValueError(f"{value!r} is not a duration such as '24h', '15m', '1h30m' or '30s'")
    return _seconds(total, value)


def _seconds(seconds: float, given: Any) -> timedelta:
    try:
        return timedelta(seconds=seconds)
    except OverflowError:  # (a ValueError is what pydantic reports against the field)
        raise ValueError(f"{given!r} is too long a duration") from None


def format_duration(value: timedelta) -> str:
    """The inverse of parse_duration: 90 minutes -> '1h30m'; a day is '24h' (as the docs write a lookback),
    days are used from two on ('2d', '7d1h')."""
    total = value.total_seconds()
    if total != int(total):
        return f"{total:g}s"
    secs, out = int(total), ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if secs >= size and (unit != "d" or secs >= 2 * size):
            out += f"{secs // size}{unit}"
            secs %= size
    return out or "0s"


Duration = Annotated[timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration, when_used="json")]


def _zone(value: str) -> str:
    if not isinstance(value, str):
        raise ValueError("a time zone name such as 'Asia/Shanghai' is needed")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {value!r} (use an IANA name such as 'Asia/Shanghai')") from exc
    return value


Zone = Annotated[str, BeforeValidator(_zone)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DaemonSettings(_Section):
    state_dir: Path = Field(default=Path("/var/lib/callbackd"), description="the SQLite database and the pid file")
    timezone: Zone = Field(default="Asia/Shanghai", description="windows, holidays and tables use this zone")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="numbers are masked from info up"
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto", description="auto: JSON lines unless on a terminal"
    )
    sweep_interval: Duration = Field(
        default=timedelta(seconds=30), description="how often expired claims return to the queue"
    )
    leader_lease: Duration = Field(
        default=timedelta(seconds=15), description="PostgreSQL: a silent leader loses its duties after this"
    )


class StoreSettings(_Section):
    url: str | None = Field(default=None, description="SQLAlchemy URL; default: SQLite in daemon.state_dir "
                                                      "(or the credential store_url)")
    busy_timeout_ms: int = Field(default=30_000, ge=0, description="SQLite: how long a writer waits for the lock")
    pool_size: int = Field(default=5, ge=1, description="PostgreSQL connections per daemon")
    statement_timeout: Duration = Field(
        default=timedelta(seconds=30),
        description="PostgreSQL only: the server cancels a daemon statement running longer, waits for locks "
        "included, and the job retries at its next tick; 0 disables; `db upgrade` and `import` run without it "
        "(SQLite: busy_timeout_ms bounds its lock waits)",
    )
    link_timeout: Duration = Field(
        default=timedelta(seconds=20),
        description="PostgreSQL only: a connection whose link or server went silent is dropped after about "
        "this long (TCP keepalives, tcp_user_timeout, connect_timeout), and one exchange that outlasts "
        "statement_timeout + this is given up on; 0: the OS's TCP defaults and no such bound",
    )

    @field_validator("statement_timeout", "link_timeout", mode="before")
    @classmethod
    def _zero(cls, v: Any) -> Any:
        return 0 if isinstance(v, str) and v.strip() == "0" else v  # "0" (no unit): off

    @field_validator("statement_timeout")
    @classmethod
    def _statement_timeout(cls, v: timedelta) -> timedelta:
        if v > timedelta(milliseconds=2**31 - 1):
            raise ValueError("PostgreSQL takes at most 24d (2147483647 ms)")
        return v

    @field_validator("link_timeout")
    @classmethod
    def _link_timeout(cls, v: timedelta) -> timedelta:
        if timedelta(0) < v < timedelta(seconds=1):
            raise ValueError("must be 0 (off) or at least 1s: a shorter TCP timeout drops healthy connections")
        if v > timedelta(milliseconds=2**31 - 1):
            raise ValueError("at most 24d (2147483647 ms)")
        return v

    @model_validator(mode="before")
    @classmethod
    def _url_credential(cls, data: Any) -> Any:
        # a PostgreSQL URL carries a password: systemd's LoadCredential=store_url:... keeps it out of the file
        if isinstance(data, dict) and not data.get("url"):
            url = _secret_from_file(None, None, "store_url")
            if url:
                data = {**data, "url": url}
        return data

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        import sqlalchemy as sa

        try:
            url = sa.engine.make_url(v)
        except Exception as exc:  # noqa: BLE001 - report any parse failure as a config error
            raise ValueError(f"not a database URL: {exc}") from exc
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueError(f"backend {url.get_backend_name()!r} is not supported (sqlite or postgresql)")
        return v


class DetectSettings(_Section):
    threshold: int = Field(default=3, ge=1, le=100, description="failed attempts in a row that open a callback")
    lookback: Duration = Field(default=timedelta(hours=24), description="only failures this recent count")
    min_wait_seconds: int = Field(default=5, ge=0, description="a shorter abandon is a misdial")
    default_region: str = Field(default="CN", description="region of numbers without a country code")
    count_reasons: list[str] = Field(
        default_factory=lambda: list(FAILURE_REASONS), description="failure reasons that count"
    )
    ignore_numbers: list[str] = Field(default_factory=list, description="numbers never called back (test phones)")
    ignore_patterns: list[str] = Field(default_factory=list, description="regular expressions of numbers to ignore")
    internal_max_digits: int = Field(default=5, ge=0, le=15, description="numbers this short are extensions")

    @field_validator("lookback")
    @classmethod
    def _lookback(cls, v: timedelta) -> timedelta:
        if v < timedelta(minutes=1):
            raise ValueError("lookback must be at least 1m")
        return v

    @field_validator("default_region")
    @classmethod
    def _region(cls, v: str) -> str:
        import phonenumbers

        v = v.upper()
        if v not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{v!r} is not a region phonenumbers knows (two letters, e.g. 'CN', 'US')")
        return v

    @field_validator("count_reasons")
    @classmethod
    def _reasons(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(FAILURE_REASONS))
        if unknown:
            raise ValueError(f"unknown reasons {unknown}; known: {', '.join(FAILURE_REASONS)}")
        return v

    @field_validator("ignore_patterns")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        for p in v:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"pattern {p!r} is not a regular expression: {exc}") from exc
        return v


class QueueSettings(_Section):
    lease: Duration = Field(default=timedelta(minutes=15), description="an operator's claim expires after this")


class RetryRuleSettings(_Section):
    delay: Duration = Field(description="wait this long before the next call (left out: the outcome's default)")
    times: int = Field(ge=0, le=20, description="retry this outcome at most this many times (0: never; left out: "
                       "the outcome's default)")


_RETRY_DEFAULTS = {"busy": ("10m", 3), "no-answer": ("30m", 2), "congestion": ("5m", 3), "failed": ("15m", 1)}


class RetrySettings(_Section):
    max_attempts: int = Field(default=5, ge=1, le=20, description="calls before a callback is unreachable")
    min_spacing: Duration = Field(default=timedelta(minutes=5), description="never two calls to one number closer")
    rules: dict[str, RetryRuleSettings] = Field(
        default_factory=lambda: {
            k: RetryRuleSettings(delay=parse_duration(d), times=n) for k, (d, n) in _RETRY_DEFAULTS.items()
        },
        description="per outcome: busy, no-answer, congestion, failed; an outcome given here replaces its "
        "default (a key left out of its table keeps the default's), the others keep theirs; times = 0: never retried",
    )

    @field_validator("rules", mode="before")
    @classmethod
    def _over_defaults(cls, v: Any) -> Any:
        """`[retry.rules] busy = { times = 5 }` changes busy only: the other outcomes keep their default rule,
        and busy keeps its default delay."""
        if not isinstance(v, dict):
            return v
        merged: dict[str, Any] = {k: {"delay": d, "times": n} for k, (d, n) in _RETRY_DEFAULTS.items()}
        for outcome, rule in v.items():
            default = merged.get(outcome)
            merged[outcome] = {**default, **rule} if default is not None and isinstance(rule, dict) else rule
        return merged

    @field_validator("rules")
    @classmethod
    def _outcomes(cls, v: dict[str, RetryRuleSettings]) -> dict[str, RetryRuleSettings]:
        unknown = sorted(set(v) - set(_RETRY_DEFAULTS))
        if unknown:
            raise ValueError(f"retry rules exist for {', '.join(_RETRY_DEFAULTS)}, not {unknown}")
        return v


class QueueLogSource(_Section):
    path: Path = Field(description="Asterisk's queue_log, e.g. /var/log/asterisk/queue_log")
    system: str = Field(
        default="pbx", min_length=1, max_length=64, description="name of the PBX: call ids are unique per system"
    )
    poll_interval: Duration = Field(default=timedelta(milliseconds=500), description="how often the file is read")
    start_at: Literal["beginning", "end"] = Field(default="beginning", description="where a first start begins")
    timezone: Zone | None = Field(default=None, description="for realtime-style time strings; default daemon's")


class CdrSource(_Section):
    path: Path = Field(description="cdr-csv/Master.csv or a cdr_custom file")
    system: str = Field(default="pbx", min_length=1, max_length=64, description="the same name as the queue_log's")
    poll_interval: Duration = Field(default=timedelta(seconds=1), description="how often the file is read")
    start_at: Literal["beginning", "end"] = Field(default="beginning", description="where a first start begins")
    timezone: Zone | None = Field(default=None, description="CDR times are local; default daemon.timezone")
    layout: Literal["auto", "csv", "custom"] = Field(default="auto", description="cdr_csv or the stock cdr_custom")
    inbound_contexts: list[str] = Field(
        default_factory=lambda: ["from-pstn", "from-trunk", "from-external", "from-did-direct"],
        description="dcontext values of citizens' calls",
    )
    hotline_numbers: list[str] = Field(default_factory=list, description="or: dst values (the hotline's DIDs)")


class HttpSettings(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: str | None = Field(
        default=None, description="how citizens and webhooks reach us, e.g. https://callback.example.gov.cn"
    )


class ConsoleSettings(_Section):
    """The operators' and admins' console and API (daemon/http/console.py, api.py)."""

    session_lifetime: Duration = timedelta(hours=12)
    secure_cookies: bool = Field(default=False, description="mark session cookies Secure (set when behind HTTPS)")
    metrics_public: bool = Field(default=False, description="serve /metrics without a bearer token")
    report_sla: Duration = Field(
        default=timedelta(hours=24),
        description="reports: 'called back within SLA' for callbacks the planner gave no SLA due time",
    )
    metrics_cache: Duration = Field(default=timedelta(seconds=10), description="reuse a scrape's figures this long")
    token_cache: Duration = Field(
        default=timedelta(seconds=5),
        description="API: reuse a bearer token's lookup this long (0s: look it up on every request); a user "
        "disabled in another process (the CLI) loses access within this time, in the daemon's own at once",
    )


class SourcesSettings(_Section):
    queue_log: QueueLogSource | None = None
    cdr: CdrSource | None = None
    ami: list[AmiSourceSettings] = Field(default_factory=list, description="[[sources.ami]]: one per PBX")


# -- SMS fallback, evaluation page, Twilio and Aliyun (issue 5) -------------------------------------
def _secret_from_file(value: Any, file: Path | None, credential: str) -> Any:
    """A secret given inline (or via CALLBACKD_*), else from `*_file`, else systemd's $CREDENTIALS_DIRECTORY."""
    if value:
        return value
    if file is not None:
        try:
            return file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read {file}: {exc}") from exc
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir and (Path(cred_dir) / credential).is_file():
        return (Path(cred_dir) / credential).read_text(encoding="utf-8").strip()
    return value


def _sms_quiet(v: Any) -> Any:
    from .settings_schedule import _ranges

    return _ranges(v)


SmsQuietHours = Annotated[list[str], BeforeValidator(_sms_quiet)]
#: when no SMS goes out if neither [sms] nor [schedule] says (a text at 03:00 wakes a citizen)
SMS_QUIET_HOURS = ("21:00-08:00",)


class SmsRoute(_Section):
    prefix: str = Field(default="", description="E.164 prefix, e.g. '+86'; '' matches every number")
    sender: Literal["console", "twilio", "aliyun"] = "console"
    language: str | None = Field(default=None, description="template language for these numbers")

    @field_validator("language")
    @classmethod
    def _language(cls, v: str | None) -> str | None:
        from sms.templates import LANGUAGES

        if v is not None and v not in LANGUAGES:
            raise ValueError(f"no SMS templates in {v!r}; languages: {', '.join(LANGUAGES)}")
        return v


class SmsSettings(_Section):
    enabled: bool = True
    hotline_name: dict[str, str] = Field(default_factory=lambda: {"zh-CN": "12345热线", "en": "12345 Hotline"})
    language: Literal["zh-CN", "en"] = "zh-CN"
    optout_words: dict[str, str] = Field(default_factory=lambda: {"zh-CN": "TD", "en": "STOP"})
    after_first_failure: bool = Field(default=False, description="also send after a callback's first failed call")
    max_segments: int = Field(default=3, ge=1, le=10)
    templates: dict[str, str] = Field(default_factory=dict, description="'recall.zh-CN' = '...{link}...'")
    routes: list[SmsRoute] = Field(default_factory=lambda: [SmsRoute()])
    poll_interval: Duration = timedelta(seconds=15)
    max_tries: int = Field(default=6, ge=1, le=50)
    backoff: Duration = timedelta(seconds=30)
    send_lease: Duration = timedelta(minutes=5)
    console_path: Path | None = Field(
        default=None, description="console sender output; default <state_dir>/sms-outbox.jsonl"
    )
    quiet_hours: SmsQuietHours = Field(
        default_factory=lambda: list(SMS_QUIET_HOURS),
        description="local times no SMS is sent (one due then waits until they end); not set: [schedule] "
        "quiet_hours if it has any, else 21:00-08:00; [] sends at any hour",
    )

    @field_validator("templates")
    @classmethod
    def _templates(cls, v: dict[str, str]) -> dict[str, str]:
        from sms.templates import problems

        bad = problems(v)   # every template at fault, as `sms preview` would name them
        if bad:
            raise ValueError("; ".join(bad))
        return v


class TwilioSettings(_Section):
    account_sid: str | None = None
    auth_token: SecretStr | None = None
    auth_token_file: Path | None = None
    from_number: str | None = None
    messaging_service_sid: str | None = None
    api_base_url: str | None = Field(default=None, description="send API calls here instead (a staging mock)")
    timeout: Duration = timedelta(seconds=15)
    # voice
    agent_number: str | None = Field(default=None, description="who the citizen is connected to")
    twiml_url: str | None = Field(default=None, description="TwiML URL for the call (instead of agent_number)")
    machine_detection: bool = False
    ring_timeout: int = Field(default=30, ge=5, le=600)
    max_concurrent_calls: int = Field(default=2, ge=0, le=1000)

    @model_validator(mode="before")
    @classmethod
    def _token_file(cls, data: Any) -> Any:
        if isinstance(data, dict):
            f = data.get("auth_token_file")
            data = {
                **data,
                "auth_token": _secret_from_file(data.get("auth_token"), Path(f) if f and isinstance(f, str) else None,
                                                "twilio_auth_token"),
            }
        return data


class AliyunSettings(_Section):
    access_key_id: str | None = None
    access_key_secret: SecretStr | None = None
    access_key_secret_file: Path | None = None
    sign_name: str | None = None
    template_codes: dict[str, str] = Field(default_factory=dict, description="kind -> template code")
    endpoint: str = "dysmsapi.aliyuncs.com"
    protocol: Literal["https", "http"] = "https"
    timeout: Duration = timedelta(seconds=10)

    @model_validator(mode="before")
    @classmethod
    def _secret_file(cls, data: Any) -> Any:
        if isinstance(data, dict):
            f = data.get("access_key_secret_file")
            data = {
                **data,
                "access_key_secret": _secret_from_file(
                    data.get("access_key_secret"), Path(f) if f and isinstance(f, str) else None,
                    "aliyun_access_key_secret"
                ),
            }
        return data


class RatingSettings(_Section):
    link_ttl: Duration = timedelta(days=7)
    base_url: str | None = Field(default=None, description="links start with this; default http.public_url")


from .settings_schedule import DialerSettings, ScheduleSettings  # noqa: E402
from .sources.twilio_settings import TwilioSourceSettings  # noqa: E402


class Settings(_Section):
    daemon: DaemonSettings = DaemonSettings()
    store: StoreSettings = Field(default_factory=StoreSettings)  # built at load: reads credentials
    detect: DetectSettings = DetectSettings()
    queue: QueueSettings = QueueSettings()
    retry: RetrySettings = RetrySettings()
    sources: SourcesSettings = SourcesSettings()
    http: HttpSettings = HttpSettings()
    schedule: ScheduleSettings | None = None
    dialer: DialerSettings = DialerSettings()
    sms: SmsSettings = SmsSettings()
    twilio: TwilioSettings = TwilioSettings()
    twilio_source: TwilioSourceSettings = TwilioSourceSettings()
    aliyun: AliyunSettings = AliyunSettings()
    rating: RatingSettings = RatingSettings()
    console: ConsoleSettings = ConsoleSettings()
    #: where the settings came from (not a setting)
    origin: str = Field(default="<defaults>", exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _sms_quiet_hours(cls, data: Any) -> Any:
        """[sms] quiet_hours not given: [schedule]'s quiet hours if it has any (so the effective settings show
        the hours in use), else the SMS default."""
        if not isinstance(data, dict):
            return data
        sms, schedule = data.get("sms", {}), data.get("schedule")
        if not isinstance(sms, dict) or "quiet_hours" in sms or not isinstance(schedule, dict):
            return data
        quiet = schedule.get("quiet_hours",
                             ScheduleSettings.model_fields["quiet_hours"].get_default(call_default_factory=True))
        try:
            quiet = _sms_quiet(quiet)
        except ValueError:
            return data                     # reported once, against [schedule]
        return {**data, "sms": {**sms, "quiet_hours": quiet}} if quiet else data

    @property
    def store_url(self) -> str:
        from callback_queue.store import default_sqlite_url

        return self.store.url or default_sqlite_url(self.daemon.state_dir)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.daemon.timezone)

    def redacted(self) -> dict[str, Any]:
        """The effective settings as plain data, secrets replaced."""
        from callback_queue.store import redact_url

        data = self.model_dump(mode="json")
        data["store"]["url"] = redact_url(self.store_url)
        for section, key in (("twilio", "auth_token"), ("aliyun", "access_key_secret")):
            if data.get(section, {}).get(key):
                data[section][key] = "(redacted)"
        return data


def find_config(explicit: str | os.PathLike[str] | None) -> Path | None:
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_PREFIX + "CONFIG")
    if env:
        return Path(env)
    for p in DEFAULT_PATHS:
        if p.exists():
            return p
    return None


def load_settings(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> Settings:
    """Read the file (if any), apply CALLBACKD_SECTION__KEY overrides, validate."""
    env = dict(os.environ if env is None else env)
    cfg_path = find_config(path)
    data: dict[str, Any] = {}
    if cfg_path is not None:
        try:
            data = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {cfg_path} does not exist") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {cfg_path} cannot be read: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {cfg_path} is not valid TOML: {exc}") from exc
    from_env: dict[tuple[str, ...], str] = {}   # dotted path -> the variable that set it (or made its table)
    for key, raw in sorted(env.items()):
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG" or "__" not in key:
            continue
        parts = [p.lower() for p in key[len(ENV_PREFIX) :].split("__")]
        node = data
        for i, p in enumerate(parts[:-1]):
            if p not in node:
                from_env.setdefault(tuple(parts[: i + 1]), key)
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"{key}: {'.'.join(parts[:-1])} is not a table")
            node = nxt
        node[parts[-1]] = _env_value(raw)
        from_env[tuple(parts)] = key
    base = cfg_path.parent if cfg_path is not None else Path.cwd()
    if "origin" in data:    # the model's own note of where it was read from, not a setting
        where = from_env.get(("origin",)) or cfg_path
        raise ConfigError(f"invalid configuration{f' in {where}' if where else ''}:\n  origin: unknown setting")
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, cfg_path, from_env)) from None
    return _resolve_paths(settings, base, str(cfg_path) if cfg_path else "<defaults>")


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


#: what an environment variable holding a list or a table looks like (its value is read as a TOML value)
_LIST = "a list is read as a TOML array, e.g. {example}"
_TABLE = "a table is read as a TOML inline table, e.g. '{{ key = \"value\" }}'"
_ENV_SHAPES = {"list_type": _LIST, "tuple_type": _LIST, "set_type": _LIST,
               "dict_type": _TABLE, "model_type": _TABLE, "model_attributes_type": _TABLE}


def _explain(exc: ValidationError, path: Path | None, from_env: dict[tuple[str, ...], str] | None = None) -> str:
    """One line per error, naming the setting and where its value came from: the file, or the CALLBACKD_*
    variable that set it (or that alone made its table)."""
    import json

    from_env = from_env or {}
    lines: list[str] = []
    in_file = in_env = False
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        field = ".".join(loc) or "(top level)"
        msg = err["msg"]
        hint = ""
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
            hint = _did_you_mean(loc, from_env)
        elif err["type"] == "missing":
            msg = "required setting is missing"
        given = err.get("input")
        var = next((from_env[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in from_env), None)
        if var is not None and err["type"] == "missing":
            table = ".".join(loc[:-1])
            shown = f" ([{table}] is set only by {var})" if table else ""
        elif var is not None:
            shape = _ENV_SHAPES.get(err["type"], "")
            example = ("'[{ key = \"value\" }]'" if _holds_tables(loc) else
                       repr(json.dumps([given] if isinstance(given, str) else ["value"], ensure_ascii=False)))
            shown = f" (got {given!r} from {var}" + (f"; {shape.format(example=example)}" if shape else "") + ")"
        else:
            shown = "" if err["type"] in ("missing",) or isinstance(given, dict) else f" (got {given!r})"
        in_env |= var is not None
        in_file |= var is None
        lines.append(f"  {field}: {msg.removeprefix('Value error, ')}{shown}{hint}")
    where = [f"in {path}"] if path and in_file else []
    where += ["from the environment"] if in_env else []
    return "\n".join([" ".join(["invalid configuration", " and ".join(where)]).rstrip() + ":", *lines])


def _did_you_mean(loc: tuple[str, ...], from_env: dict[tuple[str, ...], str]) -> str:
    """`; did you mean 'threshold'?` for an unknown key close to a setting of its table (the variable's
    name too when a CALLBACKD_* variable set it); empty when none is close."""
    import difflib

    model = _model_at(loc[:-1])
    if model is None:
        return ""
    names = [name for name, f in model.model_fields.items() if not f.exclude]
    close = difflib.get_close_matches(loc[-1].lower(), names, n=1)
    if not close:
        return ""
    if loc in from_env:
        return f"; did you mean '{close[0]}' ({ENV_PREFIX}{'__'.join((*loc[:-1], close[0])).upper()})?"
    return f"; did you mean '{close[0]}'?"


def _model_at(loc: tuple[str, ...]) -> type[BaseModel] | None:
    """The settings model of the table at `loc` (("detect",) -> DetectSettings; through optional tables,
    lists of tables and tables of tables: ("sources", "ami", "0") -> AmiSourceSettings)."""
    import typing

    model: type[BaseModel] = Settings
    ann: Any = None
    for name in loc:
        if ann is not None and typing.get_origin(ann) in (list, dict):   # an item of a list or a table of tables
            item = typing.get_args(ann)[-1]
            if not (isinstance(item, type) and issubclass(item, BaseModel)):
                return None
            model, ann = item, None
            continue
        field = model.model_fields.get(name)
        if field is None:
            return None
        ann = field.annotation
        for a in (ann, *typing.get_args(ann)):                       # Model, Model | None
            if typing.get_origin(a) in (list, dict):
                ann = a
                break
            if isinstance(a, type) and issubclass(a, BaseModel):
                model, ann = a, None
                break
        else:
            return None
    return None if ann is not None else model


def _holds_tables(loc: tuple[str, ...]) -> bool:
    """Whether the setting at `loc` is a list of tables ([[sources.ami]])."""
    import typing

    model: Any = Settings
    ann: Any = None
    for name in loc:
        field = getattr(model, "model_fields", {}).get(name)
        if field is None:
            return False
        ann = field.annotation
        model = next((a for a in (ann, *typing.get_args(ann)) if isinstance(a, type) and issubclass(a, BaseModel)),
                     None)
    return typing.get_origin(ann) is list and any(
        isinstance(a, type) and issubclass(a, BaseModel) for a in typing.get_args(ann))


def _resolve_paths(s: Settings, base: Path, origin: str) -> Settings:
    def rel(p: Path) -> Path:
        return p if p.is_absolute() else (base / p).resolve()

    daemon = s.daemon.model_copy(update={"state_dir": rel(s.daemon.state_dir)})
    sources = s.sources
    if sources.queue_log:
        sources = sources.model_copy(
            update={"queue_log": sources.queue_log.model_copy(update={"path": rel(sources.queue_log.path)})}
        )
    if sources.cdr:
        sources = sources.model_copy(update={"cdr": sources.cdr.model_copy(update={"path": rel(sources.cdr.path)})})
    store = s.store
    if store.url and store.url.startswith("sqlite:///") and not store.url.startswith("sqlite:////"):
        db = store.url.removeprefix("sqlite:///")
        if db and db != ":memory:":
            store = store.model_copy(update={"url": "sqlite:///" + str(rel(Path(db)))})
    return s.model_copy(update={"daemon": daemon, "sources": sources, "store": store, "origin": origin})
