"""Campaign effectiveness: treated vs holdout users per campaign and persona, conversions, uplift. Pure.

An *exposure* is a notification (treated) or its holdout record (control), for the persona the user moved to. It
*converts* when the user has an event of the campaign's goal type within the goal window after ``send_at``, in
event time. Goal events are remembered per user for a while (the change that causes an exposure may be read after
the goal event that answers it), so the order in which the two topics are read does not change the outcome.

Uplift is the treated conversion rate minus the holdout one, with a 95 % confidence interval from the normal
approximation of the difference of two proportions (Wald); with fewer than :data:`MIN_GROUP` users in a group
there is no interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

MIN_GROUP = 30  # users per group below which no interval is given
Z95 = 1.959964
GOAL_MEMORY = 16  # goal event times remembered per user and event type


@dataclass(slots=True)
class Exposure:
    campaign: str
    persona: str
    holdout: bool
    send_at: int
    until: int  # end of the goal window (send_at + within)
    goal: str
    converted: bool = False

    def to_fields(self) -> list[Any]:
        return [self.campaign, self.persona, self.holdout, self.send_at, self.until, self.goal, self.converted]

    @classmethod
    def from_fields(cls, w: list[Any]) -> Exposure:
        return cls(w[0], w[1], bool(w[2]), int(w[3]), int(w[4]), w[5], bool(w[6]))


def _cell_key(campaign: str, persona: str, holdout: bool) -> str:
    return f"{campaign}\x1f{persona}\x1f{int(holdout)}"


@dataclass(slots=True)
class Outcomes:
    """Per user: open exposures, recent goal events (bounded), and the user's exposures and conversions so far per
    (campaign, persona, group) — summed over users, the table behind ``/campaigns``."""

    exposures: list[Exposure] = field(default_factory=list)
    goals: dict[str, list[int]] = field(default_factory=dict)  # goal event type -> recent event times
    counts: dict[str, list[int]] = field(default_factory=dict)  # cell key -> [exposed, converted]

    def expose(self, exposure: Exposure) -> bool:
        """A new exposure; True when a remembered goal event already converts it."""
        times = self.goals.get(exposure.goal, ())
        exposure.converted = any(exposure.send_at <= t <= exposure.until for t in times)
        self.exposures.append(exposure)
        cell = self.counts.setdefault(_cell_key(exposure.campaign, exposure.persona, exposure.holdout), [0, 0])
        cell[0] += 1
        cell[1] += exposure.converted
        return exposure.converted

    def cells(self) -> list[tuple[tuple[str, str, bool], int, int]]:
        out = []
        for key, (exposed, converted) in self.counts.items():
            campaign, persona, holdout = key.split("\x1f")
            out.append(((campaign, persona, holdout == "1"), exposed, converted))
        return out

    def to_fields(self) -> list[Any]:
        return [[e.to_fields() for e in self.exposures], self.goals, self.counts]

    @classmethod
    def from_fields(cls, w: list[Any]) -> Outcomes:
        return cls([Exposure.from_fields(e) for e in w[0]], dict(w[1]), {k: list(v) for k, v in w[2].items()})

    def event(self, event_type: str, t: int, tracked: set[str]) -> list[Exposure]:
        """An event of the user; returns the exposures it converts (each converts once)."""
        if event_type not in tracked:
            return []
        times = self.goals.setdefault(event_type, [])
        times.append(t)
        del times[:-GOAL_MEMORY]
        hits = [e for e in self.exposures if not e.converted and e.goal == event_type and e.send_at <= t <= e.until]
        for e in hits:
            e.converted = True
            self.counts[_cell_key(e.campaign, e.persona, e.holdout)][1] += 1
        return hits

    def expire(self, now: int) -> None:
        """Forget exposures whose window closed (their counts are in the aggregates already)."""
        self.exposures = [e for e in self.exposures if e.until >= now]


@dataclass(slots=True)
class Cell:
    exposed: int = 0
    converted: int = 0

    @property
    def rate(self) -> float:
        return self.converted / self.exposed if self.exposed else 0.0


@dataclass(frozen=True, slots=True)
class Effect:
    campaign: str
    persona: str
    treated: Cell
    holdout: Cell
    uplift: float | None
    ci95: tuple[float, float] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign,
            "persona": self.persona,
            "treated": {
                "users": self.treated.exposed,
                "conversions": self.treated.converted,
                "rate": self.treated.rate,
            },
            "holdout": {
                "users": self.holdout.exposed,
                "conversions": self.holdout.converted,
                "rate": self.holdout.rate,
            },
            "uplift": self.uplift,
            "uplift_ci95": list(self.ci95) if self.ci95 else None,
        }


def effect(campaign: str, persona: str, treated: Cell, holdout: Cell) -> Effect:
    if not treated.exposed or not holdout.exposed:
        return Effect(campaign, persona, treated, holdout, None, None)
    pt, pc = treated.rate, holdout.rate
    uplift = pt - pc
    if min(treated.exposed, holdout.exposed) < MIN_GROUP:
        return Effect(campaign, persona, treated, holdout, uplift, None)
    se = math.sqrt(pt * (1 - pt) / treated.exposed + pc * (1 - pc) / holdout.exposed)
    return Effect(campaign, persona, treated, holdout, uplift, (uplift - Z95 * se, uplift + Z95 * se))


class Tally:
    """Exposures and conversions per (campaign, persona, group): the table behind ``/campaigns``."""

    def __init__(self) -> None:
        self.cells: dict[tuple[str, str, bool], Cell] = {}

    def cell(self, campaign: str, persona: str, holdout: bool) -> Cell:
        key = (campaign, persona, holdout)
        found = self.cells.get(key)
        if found is None:
            found = self.cells[key] = Cell()
        return found

    def exposed(self, e: Exposure) -> None:
        c = self.cell(e.campaign, e.persona, e.holdout)
        c.exposed += 1
        if e.converted:
            c.converted += 1

    def converted(self, e: Exposure) -> None:
        self.cell(e.campaign, e.persona, e.holdout).converted += 1

    def add(self, outcomes: Outcomes, sign: int = 1) -> None:
        """Add (or, with ``sign=-1``, take out) one user's counts: users of gained and lost partitions."""
        for (campaign, persona, holdout), exposed, converted in outcomes.cells():
            c = self.cell(campaign, persona, holdout)
            c.exposed += sign * exposed
            c.converted += sign * converted

    def effects(self) -> list[Effect]:
        pairs = sorted({(c, p) for c, p, _ in self.cells})
        return [effect(c, p, self.cell(c, p, False), self.cell(c, p, True)) for c, p in pairs]
