"""Settings for planning and dialing: [schedule] (off-peak windows) and [dialer]."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    field_validator,
    model_validator,
)


def _duration(v: Any) -> timedelta:
    from .settings import parse_duration

    return parse_duration(v)


def _fmt(v: timedelta) -> str:
    from .settings import format_duration

    return format_duration(v)


Duration = Annotated[timedelta, BeforeValidator(_duration), PlainSerializer(_fmt, when_used="json")]


def _ranges(v: Any) -> list[str]:
    from callback_queue.windows import TimeRange

    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list):
        raise ValueError('a list of time ranges such as ["12:00-13:30", "18:30-20:30"] is needed')
    from callback_queue.windows import EmptyRange

    bad, empty = [], []
    for item in v:
        try:
            TimeRange.parse(str(item))
        except EmptyRange:
            empty.append(str(item))
        except ValueError:
            bad.append(str(item))
    if bad:
        what = "is not a time range" if len(bad) == 1 else "are not time ranges"
        raise ValueError(f"{_items(bad)} {what} such as '12:00-13:30'")
    if empty:
        what = "is an empty window" if len(empty) == 1 else "are empty windows"
        raise ValueError(f"{_items(empty)} {what} (it starts where it ends); all day is '00:00-24:00'")
    return [str(x) for x in v]


def _windows(v: list[str]) -> list[str]:
    """Off-peak windows: time ranges, no two of which overlap (their capacity would count twice)."""
    from callback_queue.windows import TimeRange

    ranges = [TimeRange.parse(x) for x in v]
    clashes = [f"{v[i]!r} and {v[j]!r}" for i in range(len(v)) for j in range(i + 1, len(v))
               if ranges[i].overlaps(ranges[j])]
    if clashes:
        raise ValueError(f"windows overlap: {'; '.join(clashes)} (their capacity would be counted twice: "
                         "merge them into one window)")
    return v


def _items(bad: list[str]) -> str:
    """'a', 'a' and 'b', 'a', 'b' and 'c': every entry at fault, so one run of `config check` names them all."""
    quoted = [repr(x) for x in bad]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} and {quoted[-1]}"


Ranges = Annotated[list[str], BeforeValidator(_ranges)]
Windows = Annotated[list[str], BeforeValidator(_ranges), AfterValidator(_windows)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CapacitySettings(_Section):
    fixed: int | None = Field(default=None, ge=0, description="callbacks per window, whatever its length")
    agents: int = Field(default=2, ge=0, description="floating agents calling back during a window")
    handle_time: Duration = timedelta(minutes=6)

    @field_validator("handle_time")
    @classmethod
    def _positive(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError("handle_time must be more than 0")
        return v


class LearnedSettings(_Section):
    enabled: bool = False
    weeks: int = Field(default=4, ge=1, le=52)
    allowed: Ranges = Field(default_factory=lambda: ["08:30-21:00"], description="hours callbacks may be placed")
    min_hours: int = Field(default=1, ge=1, le=24)


class ScheduleSettings(_Section):
    """Off-peak windows. Absent: callbacks are due as soon as they open (no planning)."""

    workday: Windows = Field(default_factory=lambda: ["12:00-13:30", "18:30-20:30"])
    restday: Windows = Field(default_factory=lambda: ["10:00-12:00", "15:00-17:00"])
    holiday: Windows = Field(default_factory=list, description="public holidays and the weekend days of a "
                                                               "holiday block")
    weekdays: dict[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"], Windows] = Field(default_factory=dict)
    quiet_hours: Ranges = Field(default_factory=lambda: ["21:00-08:30"])
    closures: list[str] = Field(default_factory=list, description="dates (2026-10-01) or ranges "
                                                                  "(2026-12-24T18:00/2026-12-25T08:00), local time")
    extra_workdays: list[str] = Field(default_factory=list, description="dates (2027-02-20) worked whatever the "
                                "calendar says: the worked weekends (调休) of a year the holidays package lacks")
    country: str | None = "CN"
    subdivision: str | None = None
    capacity: CapacitySettings = CapacitySettings()
    sla: Duration = timedelta(hours=24)
    horizon: Duration = timedelta(days=7)
    replan_interval: Duration = timedelta(minutes=1)
    learned: LearnedSettings = LearnedSettings()

    @field_validator("country")
    @classmethod
    def _country(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        from callback_queue.holiday_calendar import check_country  # the holidays package, kept out of process

        return check_country(v)

    @field_validator("subdivision")
    @classmethod
    def _subdivision(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v in (None, ""):
            return None
        country = info.data.get("country")
        if "country" not in info.data:
            return v  # the country is wrong: that error is enough
        if country is None:
            raise ValueError("a subdivision needs a country")
        from callback_queue.holiday_calendar import check_subdivision  # the holidays package, kept out of process

        return check_subdivision(country, v)

    @field_validator("extra_workdays")
    @classmethod
    def _workdays(cls, v: list[str]) -> list[str]:
        from datetime import date

        _refuse_unparsable(v, date.fromisoformat, "is not a date such as '2027-02-20'",
                           "are not dates such as '2027-02-20'")
        return v

    @model_validator(mode="after")
    def _not_all_quiet(self) -> ScheduleSettings:
        """A window wholly inside quiet hours would silently never open."""
        from callback_queue.windows import TimeRange

        quiet = [TimeRange.parse(x) for x in self.quiet_hours]
        lists = [("workday", self.workday), ("restday", self.restday), ("holiday", self.holiday),
                 *((f"weekdays.{k}", v) for k, v in self.weekdays.items())]
        hidden = [f"{name} {w!r}" for name, ws in lists for w in ws if TimeRange.parse(w).inside(quiet)]
        if hidden:
            raise ValueError(f"{'; '.join(hidden)}: entirely inside quiet_hours {self.quiet_hours} - "
                             "the window would never open; move it or narrow quiet_hours")
        return self

    @field_validator("closures")
    @classmethod
    def _closures(cls, v: list[str]) -> list[str]:
        from datetime import date, datetime

        def closure(item: str) -> None:
            if "/" in item:
                a, b = item.split("/")
                datetime.fromisoformat(a), datetime.fromisoformat(b)
            else:
                date.fromisoformat(item)

        _refuse_unparsable(v, closure, "is not a date or a start/end range", "are not dates or start/end ranges")
        return v


def _refuse_unparsable(items: list[str], parse: Any, one: str, many: str) -> None:
    """ValueError naming every item `parse` refuses (ValueError), worded for one or many."""
    bad = []
    for item in items:
        try:
            parse(item)
        except ValueError:
            bad.append(item)
    if bad:
        raise ValueError(f"{_items(bad)} {one if len(bad) == 1 else many}")


#: the tables a dialer module reads from under [dialer] (its own settings model validates them)
DIALER_TABLES = ("ami",)


class DialerSettings(_Section):
    """Who places callbacks: operators from the list (manual), or the PBX / Twilio automatically."""

    model_config = ConfigDict(extra="allow", frozen=True)  # [dialer.ami] is its module's (DIALER_TABLES)
    kind: Literal["manual", "ami", "twilio"] = "manual"
    lease: Duration = Field(default=timedelta(minutes=10),
                            description="how long a placed call may take before it is reconciled")
    tick: Duration = Field(default=timedelta(seconds=2), description="how often due callbacks are claimed "
                                                                     "for free dialer slots")
    drain_timeout: Duration = Field(default=timedelta(seconds=30), description="on stop, wait this long for "
                                    "calls under way to end (keep it below the unit's TimeoutStopSec)")

    @model_validator(mode="after")
    def _only_dialer_tables(self) -> DialerSettings:
        """Besides its own keys, [dialer] holds only its dialers' tables ([dialer.ami]): a misspelt key is an
        error, not a setting silently ignored."""
        import difflib

        for key, value in (self.model_extra or {}).items():
            if key not in DIALER_TABLES:
                near = difflib.get_close_matches(key, [*type(self).model_fields, *DIALER_TABLES], n=1)
                raise ValueError(f"unknown setting {key!r}" + (f"; did you mean {near[0]!r}?" if near else ""))
            if not isinstance(value, dict):
                raise ValueError(f"[dialer.{key}] must be a table")
        return self
