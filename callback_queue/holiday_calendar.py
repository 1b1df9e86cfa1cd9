"""Day types (workday, restday, holiday) from the `holidays` package, without keeping it in memory.

Importing `holidays` and building one country's calendar adds about 17 MiB to a process for good
(the package imports every country module and every lunisolar table), while what the planner needs
is one letter per day. So, unless `holidays` is already imported (a CLI command, a test), a year's
day types are computed by a short-lived child running this file (about 0.2 s, once per country,
subdivision and year in a process) and kept as a string of letters: W (working day, including a
weekend day worked in exchange for a holiday), R (rest day), H (public holiday); with the year's
holiday names (a few dozen) and whether the package knows the year's official schedule.

The package marks only the statutory days: in China the weekend days inside a holiday block (Sunday
2026-02-15 in the Spring Festival break of Feb 15-23) are ordinary weekend days to it. A block is
what citizens live, so here a non-working day whose run of consecutive non-working days holds a
public holiday is a holiday too (HolidayCalendar, which also applies the configured extra working
days before finding the runs). The child returns a fortnight either side of the year for that.

Standard library only at import: the child runs this file as a script (with -P: this folder, whose
queue.py and numbers.py would shadow the standard library's, stays off its path), without the package.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

_KINDS = {"W": "workday", "R": "restday", "H": "holiday"}
#: days computed either side of a year, so that a holiday block across New Year is seen whole
MARGIN = 14
_lock = threading.Lock()


@dataclass(frozen=True)
class YearData:
    """What the package says about one year (and MARGIN days either side)."""

    letters: str                                   # from Jan 1 - MARGIN to Dec 31 + MARGIN
    provisional: bool                              # the package lacks this year's official schedule
    names: dict[date, str] = field(default_factory=dict)

    def first(self, year: int) -> date:
        return date(year, 1, 1) - timedelta(days=MARGIN)


_years: dict[tuple[str, str | None, int], YearData] = {}


class UnknownCalendar(ValueError):
    """The holidays package has no calendar for this country or subdivision."""


def _substitution_years(cal: Any) -> set[int]:
    """Years for which the package holds days off swapped with worked weekend days (调休 in China)."""
    out = set()
    for year, value in (getattr(cal, "special_public_holidays", None) or {}).items():
        entries = value if value and isinstance(value[0], tuple) else (value,)
        if any(len(e) >= 4 and isinstance(e[2], int) for e in entries):
            out.add(year)
    return out


def _provisional(cal: Any, year: int) -> bool:
    """True if the calendar is one set by a yearly official schedule (a substitution in each of the last
    three years the package knows, as China's State Council notices) and `year` is past the last one:
    its statutory days are there, its worked weekends and swapped days off are not."""
    years = _substitution_years(cal)
    if not years:
        return False
    last = max(years)
    return {last - 2, last - 1} <= years and year > last


def _compute(country: str, subdiv: str | None, year: int) -> YearData:
    """The letters, names and provisional flag of `year` (in-process: imports `holidays`)."""
    import holidays

    supported = holidays.list_supported_countries()
    if country.upper() not in supported:
        raise UnknownCalendar(f"the holidays package has no calendar for {country!r}")
    if subdiv is not None and subdiv not in supported[country.upper()]:
        raise UnknownCalendar(f"the holidays package has no subdivision {subdiv!r} for {country.upper()}; "
                              + _choices(country.upper(), supported[country.upper()]))
    try:
        cal = holidays.country_holidays(country, subdiv=subdiv, years=range(year - 1, year + 2))
    except NotImplementedError as exc:
        raise UnknownCalendar(str(exc)) from exc
    first = date(year, 1, 1) - timedelta(days=MARGIN)
    last = date(year, 12, 31) + timedelta(days=MARGIN)
    d, out, names = first, [], {}
    while d <= last:
        if d in cal:
            out.append("H")
            names[d] = cal[d]
        else:
            out.append("W" if cal.is_working_day(d) else "R")
        d += timedelta(days=1)
    return YearData("".join(out), _provisional(cal, year), names)


def _choices(country: str, subdivs: list[str]) -> str:
    if not subdivs:
        return f"{country} has none: leave subdivision unset"
    return f"valid: {', '.join(subdivs)}"


def _serialize(y: YearData) -> str:
    lines = [y.letters, "provisional" if y.provisional else "known"]
    lines += [f"{d.isoformat()}\t{' '.join(n.split())}" for d, n in sorted(y.names.items())]
    return "\n".join(lines)


def _parse(text: str) -> YearData:
    letters, flag, *rest = text.strip().split("\n")
    names = {}
    for line in rest:
        d, _, n = line.partition("\t")
        names[date.fromisoformat(d)] = n
    return YearData(letters, flag == "provisional", names)


def _in_child(country: str, subdiv: str | None, year: int) -> YearData:
    p = subprocess.run([sys.executable, "-P", __file__, country, subdiv or "", str(year)], capture_output=True,
                       text=True, encoding="utf-8", timeout=120)
    if p.returncode == 2:
        raise UnknownCalendar(p.stderr.strip().splitlines()[-1])
    try:
        if p.returncode != 0:
            raise ValueError
        data = _parse(p.stdout)
        if len(data.letters) < 365 + 2 * MARGIN or set(data.letters) - set(_KINDS):
            raise ValueError
        return data
    except ValueError:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:]
        raise RuntimeError(f"computing the {country} holiday calendar for {year} failed (exit {p.returncode}): "
                           f"{tail}") from None


def year_data(country: str, subdiv: str | None, year: int) -> YearData:
    """What the package says about one year, cached for the life of the process."""
    key = (country.upper(), subdiv or None, year)
    with _lock:
        if key not in _years:
            if "holidays" in sys.modules:
                _years[key] = _compute(*key)
            else:
                _years[key] = _in_child(*key)
        return _years[key]


def check_country(country: str) -> str:
    """`country` upper-cased if the holidays package has a calendar for it, else UnknownCalendar."""
    year_data(country, None, date.today().year)
    return country.upper()


def check_subdivision(country: str, subdiv: str) -> str:
    """`subdiv` if the holidays package has it for `country`, else UnknownCalendar naming the valid ones."""
    year_data(country, subdiv, date.today().year)
    return subdiv


class HolidayCalendar:
    """Day types for one country (and subdivision), a year at a time.

    `workdays`: dates worked whatever the package says (a year's worked weekends not in it yet)."""

    def __init__(self, country: str, subdiv: str | None = None, workdays: Iterable[date] = ()) -> None:
        self.country, self.subdiv = country, subdiv
        self.workdays = frozenset(workdays)
        self._letters: dict[int, str] = {}
        self._names: dict[int, dict[date, str]] = {}

    def _year(self, year: int) -> str:
        if year not in self._letters:
            data = year_data(self.country, self.subdiv, year)
            first = data.first(year)
            letters = list(data.letters)
            for d in self.workdays:
                if 0 <= (i := (d - first).days) < len(letters):
                    letters[i] = "W"
            names = dict(data.names)
            i = 0
            while i < len(letters):   # each run of non-working days holding a holiday is a holiday block
                if letters[i] == "W":
                    i += 1
                    continue
                j = i
                while j < len(letters) and letters[j] != "W":
                    j += 1
                if "H" in letters[i:j]:
                    run = [first + timedelta(days=k) for k in range(i, j)]
                    common = Counter(names[x] for x in run if x in names).most_common(1)
                    for k, x in zip(range(i, j), run, strict=True):
                        letters[k] = "H"
                        if x not in names and common:
                            names[x] = common[0][0]
                i = j
            start = MARGIN
            self._letters[year] = "".join(letters[start:start + (date(year, 12, 31) - date(year, 1, 1)).days + 1])
            self._names[year] = {d: n for d, n in names.items() if d.year == year and letters[(d - first).days] == "H"}
        return self._letters[year]

    def day_type(self, d: date) -> str:
        return _KINDS[self._year(d.year)[d.timetuple().tm_yday - 1]]

    def holiday_name(self, d: date) -> str | None:
        """The holiday's name (a weekend day inside a block takes the block's), None on other days."""
        self._year(d.year)
        return self._names[d.year].get(d)

    def provisional(self, year: int) -> bool:
        """The package lacks `year`'s official schedule (China: the State Council's notice)."""
        return year_data(self.country, self.subdiv, year).provisional


def provisional_years(country: str | None, subdiv: str | None, first: date, last: date) -> list[int]:
    """Years from `first` to `last` whose official schedule of days off and worked weekends the holidays
    package lacks: their statutory days are known, their 调休 working weekends are not."""
    if not country:
        return []
    return [y for y in range(first.year, last.year + 1) if year_data(country, subdiv, y).provisional]


def provisional_warning(year: int, country: str | None = "CN") -> str:
    """What an admin needs to know (and do) about a year the package has no schedule for."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        pkg = f"holidays {version('holidays')}"
    except PackageNotFoundError:
        pkg = "the holidays package"
    who = "the State Council schedule" if (country or "").upper() in ("CN", "CHN") else "the official schedule"
    return (f"{year}: {who} is not in {pkg}; working weekends (调休) are not known - add them to [schedule] "
            f"extra_workdays (and the days off given for them to [schedule] closures) or upgrade holidays")


def log_provisional(log: Any, schedule: Any, today: date) -> list[int]:
    """Log `calendar.provisional` once per provisional year the planning horizon reaches ([schedule] settings,
    or None: nothing). For the daemon's start and reload; returns the years."""
    if schedule is None or not schedule.country:
        return []
    years = provisional_years(schedule.country, schedule.subdivision, today, today + schedule.horizon)
    for y in years:
        log.warning("calendar.provisional", year=y, message=provisional_warning(y, schedule.country))
    return years


def _main(argv: list[str]) -> int:
    country, subdiv, year = argv
    try:
        sys.stdout.reconfigure(encoding="utf-8")  # type: ignore[union-attr]
        print(_serialize(_compute(country, subdiv or None, int(year))))
    except UnknownCalendar as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
