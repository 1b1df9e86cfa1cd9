"""Day types (workday, restday, holiday) from the `holidays` package, without keeping it in memory.

Importing `holidays` and building one country's calendar adds about 17 MiB to a process for good
(the package imports every country module and every lunisolar table), while what the planner needs
is one letter per day. So, unless `holidays` is already imported (a CLI command, a test), a year's
day types are computed by a short-lived child running this file (about 0.2 s, once per country,
subdivision and year in a process) and kept as a 365-letter string: W (working day, including a
weekend day worked in exchange for a holiday), R (rest day), H (public holiday).

Standard library only at import: the child runs this file as a script (with -P: this folder, whose
queue.py and numbers.py would shadow the standard library's, stays off its path), without the package.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import date, timedelta

_KINDS = {"W": "workday", "R": "restday", "H": "holiday"}
_lock = threading.Lock()
_years: dict[tuple[str, str | None, int], str] = {}


class UnknownCalendar(ValueError):
    """The holidays package has no calendar for this country or subdivision."""


def _compute(country: str, subdiv: str | None, year: int) -> str:
    """One letter per day of `year` (in-process: imports `holidays`)."""
    import holidays

    if country.upper() not in holidays.list_supported_countries():
        raise UnknownCalendar(f"the holidays package has no calendar for {country!r}")
    try:
        cal = holidays.country_holidays(country, subdiv=subdiv, years=year)
    except NotImplementedError as exc:
        raise UnknownCalendar(str(exc)) from exc
    d, out = date(year, 1, 1), []
    while d.year == year:
        out.append("H" if d in cal else "W" if cal.is_working_day(d) else "R")
        d += timedelta(days=1)
    return "".join(out)


def _in_child(country: str, subdiv: str | None, year: int) -> str:
    p = subprocess.run([sys.executable, "-P", __file__, country, subdiv or "", str(year)], capture_output=True,
                       text=True, timeout=120)
    out = p.stdout.strip()
    if p.returncode == 2:
        raise UnknownCalendar(p.stderr.strip().splitlines()[-1])
    if p.returncode != 0 or len(out) < 365 or set(out) - set(_KINDS):
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:]
        raise RuntimeError(f"computing the {country} holiday calendar for {year} failed (exit {p.returncode}): "
                           f"{tail}")
    return out


def year_types(country: str, subdiv: str | None, year: int) -> str:
    """The day-type letters of one year, cached for the life of the process."""
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
    year_types(country, None, date.today().year)
    return country.upper()


class HolidayCalendar:
    """Day types for one country (and subdivision), a year at a time."""

    def __init__(self, country: str, subdiv: str | None = None) -> None:
        self.country, self.subdiv = country, subdiv

    def day_type(self, d: date) -> str:
        return _KINDS[year_types(self.country, self.subdiv, d.year)[d.timetuple().tm_yday - 1]]


def _main(argv: list[str]) -> int:
    country, subdiv, year = argv
    try:
        print(_compute(country, subdiv or None, int(year)))
    except UnknownCalendar as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
