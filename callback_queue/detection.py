"""Detection: who tried N times in a row without getting through.

Pure: it takes a caller's attempts, what the store knows about their
callbacks, and "now", and says what should change. It is evaluated in event
time, so the result does not depend on how the input was cut into batches:
a caller who failed three times and then got through yields one callback that
was opened and cancelled as self-resolved, whether the four calls arrived in
one batch or in four.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .attempts import FAILURE_REASONS, Outcome


@dataclass(frozen=True, slots=True)
class DetectRules:
    threshold: int = 3
    lookback_seconds: int = 24 * 3600
    min_wait_seconds: int = 0
    count_reasons: frozenset[str] = frozenset(FAILURE_REASONS)


@dataclass(frozen=True, slots=True)
class AttemptView:
    """What detection needs of an attempt (ordered by (started_ts, call_id))."""

    id: int
    started_ts: int
    call_id: str
    outcome: Outcome
    reason: str
    wait_seconds: int | None


@dataclass(frozen=True, slots=True)
class OpenEpisode:
    """The caller's open callback, as far as detection cares."""

    callback_id: int
    episode_start_ts: int
    failures: int
    #: the call id of the episode's first counted failure: ties in the same second are ordered by it
    start_call_id: str = ""


@dataclass(slots=True)
class Open:
    episode_start_ts: int
    triggered_ts: int
    last_failed_ts: int
    attempt_ids: list[int]
    trigger_call_id: str = ""
    start_call_id: str = ""
    cancelled_by: AttemptView | None = None

    @property
    def failures(self) -> int:
        return len(self.attempt_ids)


@dataclass(slots=True)
class Grow:
    """The open callback's streak as it stands: every counted failure since it started."""

    callback_id: int
    last_failed_ts: int
    attempt_ids: list[int] = field(default_factory=list)

    @property
    def failures(self) -> int:
        return len(self.attempt_ids)


@dataclass(frozen=True, slots=True)
class Cancel:
    callback_id: int
    by: AttemptView


Action = Open | Grow | Cancel


def counts(rules: DetectRules, a: AttemptView) -> bool:
    """Whether a failed attempt counts towards the threshold."""
    if a.reason not in rules.count_reasons:
        return False
    # a caller who hangs up within a second or two misdialled; they did not wait to be served
    return not (
        a.reason == "abandon"
        and a.wait_seconds is not None
        and a.wait_seconds < rules.min_wait_seconds
    )


def detect(
    attempts: Sequence[AttemptView],
    *,
    now_ts: int,
    rules: DetectRules,
    open_episode: OpenEpisode | None,
    closed_boundary_ts: int | None,
) -> list[Action]:
    """The changes to make for one caller.

    attempts: the caller's attempts that may matter (at least those since
        now - lookback and since the open episode's start), in event order.
    open_episode: the caller's open callback, if any.
    closed_boundary_ts: when the caller's latest closed callback closed; a new
        streak only counts failures after it.
    """
    since = now_ts - rules.lookback_seconds
    actions: list[Action] = []
    current: Open | Grow | None = None
    current_start: tuple[int, str] | None = None   # (ts, call id) of the episode's first failure
    if open_episode is not None:
        current = Grow(open_episode.callback_id, 0, [])
        current_start = (open_episode.episode_start_ts, open_episode.start_call_id)
    streak: list[AttemptView] = []
    for a in attempts:
        key = (a.started_ts, a.call_id)
        if a.outcome is Outcome.CONNECTED:
            if current is not None and current_start is not None and key > current_start:
                if isinstance(current, Open):
                    current.cancelled_by = a
                else:
                    if current.attempt_ids:
                        actions.append(current)
                    actions.append(Cancel(current.callback_id, a))
                current = None
                current_start = None
            streak = []
            continue
        if not counts(rules, a):
            continue
        if isinstance(current, Grow):
            if current_start is not None and key >= current_start:
                current.attempt_ids.append(a.id)
                current.last_failed_ts = max(current.last_failed_ts, a.started_ts)
            continue
        if isinstance(current, Open):
            current.attempt_ids.append(a.id)
            current.last_failed_ts = a.started_ts
            continue
        if a.started_ts < since:
            continue
        if closed_boundary_ts is not None and a.started_ts <= closed_boundary_ts:
            continue
        streak.append(a)
        if len(streak) >= rules.threshold:
            current = Open(
                episode_start_ts=streak[0].started_ts,
                triggered_ts=a.started_ts,
                last_failed_ts=a.started_ts,
                attempt_ids=[s.id for s in streak],
                trigger_call_id=a.call_id,
                start_call_id=streak[0].call_id,
            )
            current_start = (streak[0].started_ts, streak[0].call_id)
            actions.append(current)
            streak = []
    if isinstance(current, Grow) and current.attempt_ids:
        actions.append(current)
    return actions
