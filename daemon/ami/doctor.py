"""`callbackd doctor` checks for the PBXs: each AMI login works, and the queue the dialer paces by exists."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from daemon.doctor import Result, check


@check
def ami_logins(s: Any) -> Iterator[Result]:
    from .client import AmiLink

    pbxs = list(getattr(s.sources, "ami", []) or [])
    queue_by_pbx: dict[str, str] = {}
    if s.dialer.kind == "ami":
        from .settings import AmiDialerSettings

        extra = (s.dialer.model_extra or {}).get("ami") or {}
        try:
            dial = AmiDialerSettings.model_validate(extra)
            if dial.queue:
                queue_by_pbx[dial.pbx] = dial.queue
        except Exception as exc:  # noqa: BLE001 - report, do not crash the doctor
            yield Result("ami dialer", False, f"[dialer.ami] is not valid: {exc}", "fix [dialer.ami]")
    for src in pbxs:
        secret = src.secret.get_secret_value() if src.secret else ""
        link = AmiLink(src.name, src.host, src.port, src.username, secret, socket_timeout=max(3.0, src.socket_timeout),
                       backoff_initial=0.2, backoff_max=0.5, events="off")
        link.start()
        try:
            if not link.wait_connected(8):
                why = link.last_error or "no answer"
                fix = ("check [[sources.ami]] username and secret (manager.conf), and `permit=` for this host"
                       if link.login_failures else f"check that Asterisk listens on {src.host}:{src.port} "
                                                   "(manager.conf: enabled = yes, bindaddr, port)")
                yield Result(f"ami {src.name}", False, f"{src.host}:{src.port}: {why}", fix)
                continue
            yield Result(f"ami {src.name}", True, f"logged in to {src.host}:{src.port} as {src.username}")
            queue = queue_by_pbx.get(src.name)
            if queue:
                rows = link.list_action("QueueSummary", {"Queue": queue}, timeout=5)
                found = [r for r in rows if (r.get("queue") or r.get("Queue")) == queue]
                if found:
                    yield Result(f"ami {src.name} queue", True, f"queue {queue!r} exists")
                else:
                    yield Result(f"ami {src.name} queue", False, f"queue {queue!r} is not on this PBX",
                                 "fix [dialer.ami] queue, or create it in queues.conf")
        finally:
            link.stop()
