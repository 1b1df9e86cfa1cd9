"""Wiring from settings: senders, router, composer, the outbox; the daemon component that ticks it."""

from __future__ import annotations

from typing import Any

from callback_queue.clock import Clock
from callback_queue.errors import ConfigError
from callback_queue.store import Store

from .errors import SmsError
from .outbox import OutboxConfig, SmsOutbox
from .quiet import QuietHours
from .senders.base import Route, Router, Sender
from .templates import composer_from


def public_base(settings: Any) -> str:
    """How citizens and Twilio reach the daemon's HTTP server."""
    h = settings.http
    return (h.public_url or f"http://{h.host}:{h.port}").rstrip("/")


def link_base(settings: Any) -> str:
    return (settings.rating.base_url or public_base(settings)).rstrip("/")


def build_senders(settings: Any, *, twilio_client: Any = None) -> dict[str, Sender]:
    """The senders the routes name (only those: an unused provider needs no credentials)."""
    wanted = {r.sender for r in settings.sms.routes}
    out: dict[str, Sender] = {}
    if "console" in wanted:
        from .senders.console import ConsoleSender

        path = settings.sms.console_path or settings.daemon.state_dir / "sms-outbox.jsonl"
        out["console"] = ConsoleSender(path)
    if "twilio" in wanted:
        from .senders.twilio import TwilioSender
        from .twilio_http import twilio_client as make_client

        tw = settings.twilio
        try:
            out["twilio"] = TwilioSender(twilio_client or make_client(settings), from_number=tw.from_number,
                                         messaging_service_sid=tw.messaging_service_sid)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    if "aliyun" in wanted:
        from .senders.aliyun import AliyunSender

        a = settings.aliyun
        if not (a.access_key_id and a.access_key_secret and a.sign_name):
            raise ConfigError("[aliyun] access_key_id, access_key_secret and sign_name are needed for Aliyun SMS")
        try:
            out["aliyun"] = AliyunSender(access_key_id=a.access_key_id,
                                         access_key_secret=a.access_key_secret.get_secret_value(),
                                         sign_name=a.sign_name, template_codes=dict(a.template_codes),
                                         endpoint=a.endpoint, protocol=a.protocol,
                                         timeout_ms=int(a.timeout.total_seconds() * 1000))
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    return out


def build_outbox(settings: Any, store: Store, clock: Clock, *, senders: dict[str, Sender] | None = None,
                 log: Any = None) -> SmsOutbox:
    s = settings.sms
    senders = senders if senders is not None else build_senders(settings)
    router = Router([Route(r.prefix, r.sender, r.language) for r in s.routes], senders)
    status_cb = None
    if settings.http.public_url and "twilio" in senders:
        status_cb = public_base(settings) + "/twilio/sms-status"
    config = OutboxConfig(link_base=link_base(settings), link_ttl=settings.rating.link_ttl,
                          after_first_failure=s.after_first_failure, max_tries=s.max_tries, backoff=s.backoff,
                          send_lease=s.send_lease, status_callback=status_cb,
                          quiet=QuietHours.parse(settings.daemon.timezone, s.quiet_hours))
    return SmsOutbox(store, clock, router, composer_from(settings), config, log=log)


class SmsComponent:
    """Adds the outbox tick to the daemon's scheduler (the tables are the queue; the job is only a tick)."""

    name = "sms"

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self.outbox = build_outbox(daemon.settings, daemon.store, daemon.clock, log=daemon.log)
        self._checked: tuple[Any, SmsOutbox] | None = None  # (settings, outbox) built by check_reload
        if not (daemon.settings.http.public_url or daemon.settings.rating.base_url):
            daemon.log.warning("sms.no_public_url", links=self.outbox.config.link_base,
                               hint="set [http] public_url: citizens open the rating link from their phones")

    def start(self) -> None:
        # through self.outbox at every tick, so a reload's new outbox is the one that runs
        self.daemon.add_job("sms:outbox", lambda: self.outbox.tick(),
                            self.daemon.settings.sms.poll_interval.total_seconds())

    def check_reload(self, new: Any) -> None:
        """SIGHUP, before anything changes: the new templates, routes and senders are built here, so a
        bad SMS setup (missing credentials, say) refuses the whole new configuration."""
        try:
            outbox = build_outbox(new, self.daemon.store, self.daemon.clock, log=self.daemon.log)
        except (SmsError, ValueError) as exc:  # a template, a sender's own check: the configuration's fault
            raise ConfigError(f"[sms]: {exc}") from exc
        self._checked = (new, outbox)

    def reload(self, new: Any) -> None:
        """SIGHUP: templates, routes and senders are rebuilt; messages under way keep their rows.
        (A failure here reaches the daemon, which says what was kept.)"""
        checked, self._checked = self._checked, None
        self.outbox = checked[1] if checked is not None and checked[0] is new else \
            build_outbox(new, self.daemon.store, self.daemon.clock, log=self.daemon.log)

    def stop(self) -> None:
        pass

