"""No SMS in quiet hours: the outbox keeps a message queued with a not-before time and sends it when they
end; [sms] quiet_hours defaults to [schedule]'s, else 21:00-08:00 local."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from sms_support import add_callback, callback_state, events, outbox, settings_for, sms_rows

from callback_queue.clock import FakeClock
from callback_queue.store import Store
from daemon.settings import Settings
from sms.errors import TransientSendError
from sms.quiet import QuietHours
from sms.senders.console import ConsoleSender
from sms.testing import ScriptedSender

SH = ZoneInfo("Asia/Shanghai")
NIGHT = QuietHours.parse(SH, ["21:00-08:00"])


def local(y: int, mo: int, d: int, h: int, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=SH).astimezone(UTC)


def test_until_is_the_end_of_the_quiet_spell() -> None:
    assert NIGHT.until(local(2026, 11, 28, 3, 1)) == local(2026, 11, 28, 8)
    assert NIGHT.until(local(2026, 11, 27, 21)) == local(2026, 11, 28, 8)
    assert NIGHT.until(local(2026, 11, 27, 20, 59)) is None
    assert NIGHT.until(local(2026, 11, 28, 8)) is None
    # ranges that touch are one spell; none at all: never quiet
    two = QuietHours.parse(SH, ["22:00-01:00", "00:30-07:00"])
    assert two.until(local(2026, 11, 27, 23)) == local(2026, 11, 28, 7)
    assert QuietHours.parse(SH, []).until(local(2026, 11, 28, 3)) is None


def test_an_sms_due_at_night_waits_until_quiet_hours_end(store: Store, tmp_path: Path) -> None:
    clock = FakeClock(local(2026, 11, 28, 3, 1))
    console = ConsoleSender(tmp_path / "out.jsonl")
    box = outbox(store, clock, {"console": console}, quiet=NIGHT)
    cid = add_callback(store, clock.now(), "+8613800138001")
    stats = box.tick()
    assert (stats.queued, stats.sent) == (1, 0) and console.messages() == []
    [row] = sms_rows(store, cid)
    assert row.state == "pending" and row.next_try_at.replace(tzinfo=UTC) == local(2026, 11, 28, 8)
    queued = [e for e in events(store, cid) if e.event == "sms_queued"][-1]
    detail = queued.detail if isinstance(queued.detail, dict) else json.loads(queued.detail)
    assert detail["not_before"] == local(2026, 11, 28, 8).isoformat()
    clock.set(local(2026, 11, 28, 7, 59))
    assert box.tick().sent == 0 and console.messages() == []
    clock.set(local(2026, 11, 28, 8))
    assert box.tick().sent == 1 and len(console.messages()) == 1
    assert callback_state(store, cid) == "sms_sent"


def test_a_retry_that_falls_into_quiet_hours_is_held(store: Store) -> None:
    clock = FakeClock(local(2026, 11, 27, 20, 59))
    sender = ScriptedSender(script=[TransientSendError("busy")])
    box = outbox(store, clock, {"fake": sender}, quiet=NIGHT, backoff=timedelta(minutes=5))
    cid = add_callback(store, clock.now(), "+8613800138001")
    assert box.tick().retried == 1                       # tried at 20:59, refused for now
    clock.set(local(2026, 11, 27, 21, 4))
    stats = box.tick()
    assert stats.held == 1 and stats.sent == 0 and sender.calls == 1
    [row] = sms_rows(store, cid)
    assert row.state == "pending" and row.next_try_at.replace(tzinfo=UTC) == local(2026, 11, 28, 8)
    clock.set(local(2026, 11, 28, 8))
    assert box.tick().sent == 1 and sender.calls == 2


def test_without_quiet_hours_it_goes_at_once(store: Store, tmp_path: Path) -> None:
    clock = FakeClock(local(2026, 11, 28, 3, 1))
    console = ConsoleSender(tmp_path / "out.jsonl")
    box = outbox(store, clock, {"console": console}, quiet=QuietHours.parse(SH, []))
    add_callback(store, clock.now(), "+8613800138001")
    assert box.tick().sent == 1


def test_settings_sms_quiet_hours_default_to_schedule_then_night() -> None:
    assert Settings().sms.quiet_hours == ["21:00-08:00"]                        # no [schedule]
    assert Settings.model_validate({"schedule": {}}).sms.quiet_hours == ["21:00-08:30"]   # [schedule]'s default
    assert Settings.model_validate({"schedule": {"quiet_hours": ["22:00-07:00"]}}).sms.quiet_hours == ["22:00-07:00"]
    assert Settings.model_validate({"schedule": {"quiet_hours": []}}).sms.quiet_hours == ["21:00-08:00"]
    explicit = {"schedule": {"quiet_hours": ["22:00-07:00"]}, "sms": {"quiet_hours": []}}
    assert Settings.model_validate(explicit).sms.quiet_hours == []               # [sms] given: it wins


def test_the_daemon_outbox_uses_the_setting_in_the_daemon_zone(store: Store, tmp_path: Path) -> None:
    from sms.service import build_outbox

    s = settings_for(tmp_path, store.url, daemon={"state_dir": str(tmp_path), "timezone": "Asia/Shanghai"},
                     sms={"quiet_hours": ["21:00-08:00"]})
    box = build_outbox(s, store, FakeClock(local(2026, 11, 28, 3, 1)))
    assert box.config.quiet == NIGHT
    assert build_outbox(settings_for(tmp_path, store.url), store, FakeClock()).config.quiet.ranges == ()
