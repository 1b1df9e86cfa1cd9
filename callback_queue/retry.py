"""Retry policy: what happens after a call that did not reach the citizen. Pure, takes `now`."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta


class DialOutcome(enum.StrEnum):
    """How one call to the citizen ended (operators' and dialers' words alike)."""

    REACHED = "reached"
    NO_ANSWER = "no-answer"
    BUSY = "busy"
    CONGESTION = "congestion"
    FAILED = "failed"
    WRONG_NUMBER = "wrong-number"
    DECLINED = "declined"

    @property
    def reached(self) -> bool:
        return self in (DialOutcome.REACHED, DialOutcome.DECLINED)


@dataclass(frozen=True, slots=True)
class RetryRule:
    delay: timedelta
    times: int          # retries of this outcome; 0: it ends the callback at once


DEFAULT_RULES = {
    DialOutcome.BUSY: RetryRule(timedelta(minutes=10), 3),
    DialOutcome.NO_ANSWER: RetryRule(timedelta(minutes=30), 2),
    DialOutcome.CONGESTION: RetryRule(timedelta(minutes=5), 3),
    DialOutcome.FAILED: RetryRule(timedelta(minutes=15), 1),
}


@dataclass(frozen=True, slots=True)
class Retry:
    at: datetime


@dataclass(frozen=True, slots=True)
class GiveUp:
    """The callback ends: reached, cancelled (wrong number) or unreachable."""

    state: str          # reached | cancelled | unreachable
    reason: str


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`rules` is the whole set: an outcome without a rule is not retried (the settings fill in the
    defaults of outcomes the configuration leaves out)."""

    rules: dict[DialOutcome, RetryRule] = field(default_factory=lambda: dict(DEFAULT_RULES))
    max_attempts: int = 5
    min_spacing: timedelta = timedelta(minutes=5)

    def decide(self, outcome: DialOutcome | str, *, attempts: int, counts: dict[str, int],
               now: datetime) -> Retry | GiveUp:
        """`attempts` and `counts` include the call that just ended."""
        outcome = DialOutcome(outcome)
        if outcome.reached:
            return GiveUp("reached", outcome.value)
        if outcome is DialOutcome.WRONG_NUMBER:
            return GiveUp("cancelled", "wrong number")
        rule = self.rules.get(outcome)
        if rule is None or rule.times == 0:
            return GiveUp("unreachable", f"{outcome.value}: not retried")
        if attempts >= self.max_attempts:
            return GiveUp("unreachable", f"{attempts} calls without reaching the citizen")
        if counts.get(outcome.value, 0) > rule.times:
            return GiveUp("unreachable", f"{outcome.value} {counts[outcome.value]} times")
        return Retry(now + max(rule.delay, self.min_spacing))
