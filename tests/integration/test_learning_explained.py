"""`schedule learn`'s explanation: the busiest hour it names is an allowed one, and its dates are local."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

from callback_queue.attempts import Attempt, Origin, Outcome
from callback_queue.clock import FakeClock
from callback_queue.detection import DetectRules
from callback_queue.ingest import Ingestor
from callback_queue.learning import learn_windows
from callback_queue.store import Store
from callback_queue.windows import DAYS, Capacity, ScheduleRules, TimeRange

SH = ZoneInfo("Asia/Shanghai")


def _calls(day: date, hour: int, n: int, first: int) -> list[Attempt]:
    start = int(datetime.combine(day, time(hour, 5), SH).timestamp())
    return [Attempt("pbx", f"c{first + i}", f"139{first + i:08d}", f"+86139{first + i:08d}", start + i * 60,
                    start + i * 60 + 30, Outcome.CONNECTED, "connect", 10, "hotline", Origin.QUEUE_LOG)
            for i in range(n)]


def test_the_busiest_allowed_hour_is_allowed_and_the_dates_are_local(store: Store) -> None:
    # 02:31 on Saturday 28 November in Shanghai: still Friday the 27th in UTC
    clock = FakeClock(datetime(2026, 11, 28, 2, 31, tzinfo=SH).astimezone(UTC))
    tuesday = date(2026, 11, 24)
    # night traffic (02:00, outside 08:30-21:00) is the busiest of the day; 14:00 the busiest allowed hour
    Ingestor(store, clock, DetectRules()).ingest(_calls(tuesday, 2, 8, 0) + _calls(tuesday, 14, 3, 100))
    base = ScheduleRules(tz=SH, workday=(TimeRange.parse("12:00-13:00"),), restday=(TimeRange.parse("10:00-11:00"),),
                         quiet=(TimeRange.parse("21:00-08:30"),), capacity=Capacity(fixed=2))
    learned = learn_windows(store, clock, base, weeks=1, allowed=(TimeRange.parse("08:30-21:00"),), min_hours=1)
    day = DAYS[tuesday.weekday()]
    assert learned.volume[day][2] == 8.0 and learned.volume[day][14] == 3.0
    line = next(x for x in learned.explanation if x.startswith(f"{day}:"))
    assert line.endswith("busiest allowed hour 14:00 has 3.0/h"), line
    # a day without traffic: every allowed hour is as quiet; the first whole allowed hour is named, not 00:00
    quiet = next(x for x in learned.explanation if x.startswith(f"{DAYS[(tuesday.weekday() + 1) % 7]}:"))
    assert quiet.endswith("busiest allowed hour 09:00 has 0.0/h"), quiet
    # the header's dates are the hotline's: since = 21 Nov 02:31 local (20 Nov in UTC), until = 28 Nov
    assert "(2026-11-21 to 2026-11-28, Asia/Shanghai)" in learned.explanation[0], learned.explanation[0]
