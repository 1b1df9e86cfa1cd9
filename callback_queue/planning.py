"""The planner: gives each open callback a due time inside a window. Pure; takes `now`.

In priority order (priority, then more failures, then longest waiting), each
callback goes into the first window that still has room and ends after the
callback may be called (its retry time, minimum spacing since the last call).
A callback whose window lies past its SLA — or that finds no window in the
horizon — is flagged, not silently delayed. A callback already being dialed
uses its window's capacity but is not moved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter

from .windows import Window


@dataclass(frozen=True, slots=True)
class PlanItem:
    """What the planner needs of an open callback."""

    id: int
    priority: int
    failures: int
    triggered_at: datetime
    earliest: datetime          # not before: retry time, spacing since the last call, or now
    sla_due_at: datetime
    dialing: bool = False
    window_start: datetime | None = None


@dataclass(frozen=True, slots=True)
class Placement:
    id: int
    window: Window | None       # None: no window with room in the horizon
    due_at: datetime | None
    breach: bool                # cannot be called within its SLA


@dataclass
class Plan:
    placements: list[Placement]
    windows: list[Window]
    load: dict[datetime, int] = field(default_factory=dict)   # window start -> callbacks planned

    @property
    def breaches(self) -> list[Placement]:
        return [p for p in self.placements if p.breach]


def plan(items: Sequence[PlanItem], windows: Sequence[Window], now: datetime) -> Plan:
    ordered_windows = [w for w in sorted(windows, key=lambda w: w.start) if w.end > now]
    n = len(ordered_windows)
    index = {w.start: i for i, w in enumerate(ordered_windows)}
    room = [w.capacity for w in ordered_windows]
    used = [0] * n
    ends = [w.end for w in ordered_windows]
    placements: list[Placement] = []
    # calls already under way keep their window and use its room
    todo: list[PlanItem] = []
    for it in items:
        if it.dialing:
            i = index.get(it.window_start)  # type: ignore[arg-type]
            if i is not None:
                room[i] -= 1
                used[i] += 1
        else:
            todo.append(it)
    # priority, then more failures, then longest waiting, then id: stable sorts from the last key to the
    # first, with C-level keys (cheaper than one sort building a tuple key per item in Python)
    todo.sort(key=attrgetter("id"))
    todo.sort(key=attrgetter("triggered_at"))
    todo.sort(key=attrgetter("failures"), reverse=True)
    todo.sort(key=attrgetter("priority"), reverse=True)
    first_open = 0
    for it in todo:
        earliest = now if now > it.earliest else it.earliest
        # windows that are full before this one never get room back: skip them for good
        while first_open < n and room[first_open] <= 0:
            first_open += 1
        i = first_open
        while i < n and (ends[i] <= earliest or room[i] <= 0):
            i += 1
        if i == n:
            placements.append(Placement(it.id, None, None, True))
            continue
        room[i] -= 1
        used[i] += 1
        chosen = ordered_windows[i]
        due = earliest if earliest > chosen.start else chosen.start
        placements.append(Placement(it.id, chosen, due, due > it.sla_due_at))
    return Plan(placements, ordered_windows, {w.start: used[i] for i, w in enumerate(ordered_windows)})
