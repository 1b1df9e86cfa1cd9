"""Quiet hours for SMS: no text reaches a citizen at night. Pure, takes `now`.

The ranges are local wall-clock times in the hotline's zone ("21:00-08:00" runs past midnight); a
message due inside them waits until they end. Ranges that touch or overlap are one quiet spell.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from callback_queue.windows import TimeRange, local_interval


@dataclass(frozen=True)
class QuietHours:
    tz: ZoneInfo
    ranges: tuple[TimeRange, ...] = ()

    @classmethod
    def parse(cls, tz: ZoneInfo | str, ranges: list[str] | tuple[str, ...]) -> QuietHours:
        return cls(ZoneInfo(tz) if isinstance(tz, str) else tz, tuple(TimeRange.parse(r) for r in ranges))

    def until(self, when: datetime) -> datetime | None:
        """When the quiet spell `when` falls in ends (UTC), or None if `when` is not quiet."""
        end: datetime | None = None
        at = when
        for _ in range(8):          # ranges chained round the clock cannot hold a message for ever
            day = at.astimezone(self.tz).date()
            spans = (local_interval(day + timedelta(days=k), r, self.tz) for r in self.ranges for k in (-1, 0))
            ends = [b for a, b in spans if a <= at < b]
            if not ends:
                break
            end = at = max(ends)
        return end

    def __str__(self) -> str:
        return ", ".join(str(r) for r in self.ranges) or "none"
