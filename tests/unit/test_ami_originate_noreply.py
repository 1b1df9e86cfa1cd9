"""An Originate whose Response never comes stays in flight ("outcome unknown"), never "failed":
the PBX may be ringing the citizen, and a failed outcome would be retried - a second call."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from callback_queue.dialing import DialRequest, DialResult
from callback_queue.retry import DialOutcome
from daemon.ami.client import AmiError, AmiNoReply
from daemon.ami.dialer import AmiDialer
from daemon.ami.settings import AmiDialerSettings
from daemon.dispatch import DialError

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
CFG = {"pbx": "pbx", "mode": "citizen-first", "citizen_channel": "Local/{number}@citizens",
       "agent_exten": "200", "context": "callback_to_agent", "max_concurrent": 2, "settle_seconds": 0}


class FakeLink:
    name = "pbx"
    connected = True

    def __init__(self, error: AmiError) -> None:
        self.error = error
        self.channels: list[dict[str, str]] = []
        self.sink: Any = None

    def subscribe(self, names: Any, sink: Any) -> None:
        self.sink = sink

    def action(self, name: str, keys: dict[str, Any], variables: Any = None, timeout: Any = None) -> dict[str, str]:
        raise self.error

    def list_action(self, name: str, keys: dict[str, Any], timeout: Any = None) -> list[dict[str, str]]:
        return list(self.channels)


def _dialer(error: AmiError) -> tuple[AmiDialer, FakeLink]:
    link = FakeLink(error)
    return AmiDialer(link, AmiDialerSettings.model_validate(CFG), region="US"), link  # type: ignore[arg-type]


REQ = DialRequest(7, "+12025550100", "cbd-7-abc", 1)


def test_a_refused_originate_is_not_placed() -> None:
    dialer, _ = _dialer(AmiError("Originate refused: no such context"))
    with pytest.raises(DialError):
        dialer.place(REQ)
    assert dialer.free_slots() == 2


def test_an_unanswered_originate_stays_in_flight_and_its_events_still_end_it() -> None:
    dialer, link = _dialer(AmiNoReply("no answer to Originate within 3s"))
    dialer.place(REQ)                      # no DialError: the PBX may have placed it
    assert dialer.free_slots() == 1        # it holds its slot
    results: list[DialResult] = []
    with dialer._lock:
        dialer._handle("originateresponse", {"actionid": REQ.dial_ref, "response": "Success", "reason": "4"},
                       results)
    assert [r.outcome for r in results] == [DialOutcome.REACHED]
    assert dialer.status(REQ.dial_ref, NOW) is DialOutcome.REACHED


def test_an_unanswered_originate_is_reconciled_with_the_pbx() -> None:
    dialer, link = _dialer(AmiNoReply("link closed during Originate"))
    dialer.place(REQ)
    link.channels = [{"uniqueid": f"{REQ.dial_ref}-ch"}]
    assert dialer.status(REQ.dial_ref, NOW) is None          # ringing on the PBX: still unknown
    link.channels = []
    assert dialer.status(REQ.dial_ref, NOW) is DialOutcome.FAILED  # gone, unseen: as after a restart
    assert dialer.free_slots() == 2
