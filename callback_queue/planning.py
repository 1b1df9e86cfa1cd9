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
    room = {w.start: w.capacity for w in ordered_windows}
    load = dict.fromkeys(room, 0)
    placements: list[Placement] = []
    # calls already under way keep their window and use its room
    for it in items:
        if it.dialing and it.window_start in room:
            room[it.window_start] -= 1
            load[it.window_start] += 1
    todo = sorted((it for it in items if not it.dialing),
                  key=lambda it: (-it.priority, -it.failures, it.triggered_at, it.id))
    first_open = 0
    for it in todo:
        earliest = max(it.earliest, now)
        chosen: Window | None = None
        # windows that are full before this one never get room back: skip them for good
        while first_open < len(ordered_windows) and room[ordered_windows[first_open].start] <= 0:
            first_open += 1
        for w in ordered_windows[first_open:]:
            if w.end <= earliest or room[w.start] <= 0:
                continue
            chosen = w
            break
        if chosen is None:
            placements.append(Placement(it.id, None, None, breach=True))
            continue
        room[chosen.start] -= 1
        load[chosen.start] += 1
        due = max(chosen.start, earliest)
        placements.append(Placement(it.id, chosen, due, breach=due > it.sla_due_at))
    return Plan(placements, ordered_windows, load)
