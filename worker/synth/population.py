"""Generate users whose behaviour follows known personas, some switching persona and some going silent.

Everything is driven by one seed, so a population is reproducible. Event times start at ``start_ms`` and cover
``days`` days; each persona has its own event mix, spend, hours of day and weekend habit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worker.events.timefmt import format_rfc3339

_DAY_MS = 86_400_000
_HOUR_MS = 3_600_000


@dataclass(frozen=True)
class PersonaSpec:
    name: str
    share: float
    rates: dict[str, float]  # events per day
    hours: tuple[int, int]  # active local hours [from, to)
    spend: float = 0.0  # mean value of a purchase
    weekend_boost: float = 1.0
    valued: frozenset[str] = frozenset({"purchase"})  # event types that carry a monetary value
    # one event in all (of the first type), in the first quarter of the span: a cohort's one-time customers
    once: bool = False


PERSONAS: tuple[PersonaSpec, ...] = (
    PersonaSpec("creators", 0.28, {"post": 1.2, "upload": 0.5, "comment": 0.8, "view": 1.0}, (18, 24)),
    PersonaSpec("social consumers", 0.24, {"view": 2.0, "like": 2.0, "share": 0.6}, (19, 24), weekend_boost=1.5),
    PersonaSpec("readers", 0.20, {"read_article": 2.0, "view": 0.8}, (6, 11)),
    PersonaSpec(
        "bargain hunters",
        0.16,
        {"view_product": 1.5, "coupon": 0.7, "purchase": 0.25},
        (12, 18),
        15.0,
        weekend_boost=2.0,
    ),
    PersonaSpec("big spenders", 0.12, {"view_product": 0.8, "purchase": 0.5}, (11, 22), 220.0),
)


@dataclass
class Truth:
    user_id: str
    persona: str  # at the start (for a user who joins late: the persona they join with)
    final: str  # at the end: the persona switched to, or "dormant" for users gone silent
    switch_at: int | None = None  # event time of the switch
    silent_at: int | None = None  # event time the user stopped
    joined_at: int | None = None  # event time of a late user's first event (an emerging persona)
    low_activity: bool = False  # a noisy user with a fraction of the persona's usual activity

    @property
    def stable(self) -> bool:
        """Behaviour never changed: one persona from the first event to the last."""
        return self.switch_at is None and self.silent_at is None


@dataclass
class Population:
    events: list[dict[str, Any]]
    truth: dict[str, Truth] = field(default_factory=dict)
    start_ms: int = 0
    end_ms: int = 0


@dataclass(frozen=True)
class World:
    """A population's recipe: its personas, and which share of users switch, go silent, join a persona that only
    appears mid-stream, or are much less active than their persona (noisy, few events)."""

    personas: tuple[PersonaSpec, ...] = PERSONAS
    switch_share: float = 0.10
    silent_share: float = 0.08
    low_activity_share: float = 0.0
    low_activity: float = 0.2  # activity multiplier of low-activity users
    emerging: PersonaSpec | None = None  # a persona nobody has until ``emerge_at``
    emerging_share: float = 0.0  # users who join with it from then on
    emerge_at: float = 0.45  # share of the span
    diverging: PersonaSpec | None = (
        None  # a behaviour some users of persona ``diverge_from`` take up from ``emerge_at``
    )
    diverge_from: int = 0
    diverge_share: float = 0.0  # the share of that persona's users who do
    switch_window: tuple[float, float] = (0.35, 0.55)  # share of the span where switches happen
    silent_window: tuple[float, float] = (0.30, 0.45)
    span: float = 1.0  # the world's event time is this many times the days asked for, ending where others end


def generate(
    users: int = 2000,
    days: float = 28.0,
    seed: int = 1,
    switch_share: float = 0.10,
    silent_share: float = 0.08,
    start_ms: int = 1_767_225_600_000,  # 2026-01-01T00:00:00Z
    personas: tuple[PersonaSpec, ...] = PERSONAS,
) -> Population:
    return generate_world(World(personas, switch_share, silent_share), users, days, seed, start_ms)


def generate_world(
    world: World,
    users: int = 2000,
    days: float = 28.0,
    seed: int = 1,
    start_ms: int = 1_767_225_600_000,
) -> Population:
    rng = np.random.default_rng(seed)
    personas = world.personas
    # a slower world reaches further back, so it ends where the others do (in the past: a worker dead-letters
    # events stamped beyond tomorrow, and a year from 2026-01-01 is not all past yet)
    start_ms -= int(days * (world.span - 1.0) * _DAY_MS)
    days *= world.span
    end_ms = start_ms + int(days * _DAY_MS)
    span = days * _DAY_MS
    shares = np.array([p.share for p in personas])
    shares = shares / shares.sum()
    pop = Population([], {}, start_ms, end_ms)
    zones = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo")
    platforms = ("ios", "android", "web")
    late = round(users * world.emerging_share) if world.emerging is not None else 0
    for u in range(users):
        uid = f"user-{u:06d}"
        segments: list[tuple[PersonaSpec, int, int]]
        if u >= users - late:
            assert world.emerging is not None
            joined = start_ms + int(rng.uniform(world.emerge_at, world.emerge_at + 0.1) * span)
            truth = Truth(uid, world.emerging.name, world.emerging.name, joined_at=joined)
            segments = [(world.emerging, joined, end_ms)]
        else:
            first = int(rng.choice(len(personas), p=shares))
            truth = Truth(uid, personas[first].name, personas[first].name)
            # (a draw only in a world with a diverging behaviour: every other world's users stay as they were)
            diverges = (
                world.diverging is not None and first == world.diverge_from and rng.random() < world.diverge_share
            )
            roll = rng.random()
            if diverges:
                assert world.diverging is not None
                at = start_ms + int(rng.uniform(world.emerge_at, world.emerge_at + 0.1) * span)
                segments = [(personas[first], start_ms, at), (world.diverging, at, end_ms)]
                truth.final, truth.switch_at = world.diverging.name, at
            elif roll < world.switch_share:
                other = int(rng.choice([i for i in range(len(personas)) if i != first]))
                at = start_ms + int(rng.uniform(*world.switch_window) * span)
                segments = [(personas[first], start_ms, at), (personas[other], at, end_ms)]
                truth.final, truth.switch_at = personas[other].name, at
            elif roll < world.switch_share + world.silent_share:
                at = start_ms + int(rng.uniform(*world.silent_window) * span)
                segments = [(personas[first], start_ms, at)]
                truth.final, truth.silent_at = "dormant", at
            else:
                segments = [(personas[first], start_ms, end_ms)]
                truth.low_activity = roll < world.switch_share + world.silent_share + world.low_activity_share
        pop.truth[uid] = truth
        activity = float(rng.lognormal(0.0, 0.25)) * (world.low_activity if truth.low_activity else 1.0)
        tz = zones[u % len(zones)]
        platform = platforms[int(rng.integers(len(platforms)))]
        for spec, lo, hi in segments:
            events = list(_events(rng, uid, spec, lo, hi, activity, tz, platform))
            pop.events.extend(events)
            if spec.once and events:  # a one-time customer has stopped after their purchase: dormant in the end
                truth.final, truth.silent_at = "dormant", max(e["_t"] for e in events)
    # a user who never did anything does not exist for the stream (a slow persona may draw no event in the span)
    active = {e["user_id"] for e in pop.events}
    pop.truth = {uid: t for uid, t in pop.truth.items() if uid in active}
    pop.events.sort(key=lambda e: (e["_t"], e["user_id"]))
    for i, e in enumerate(pop.events):
        t = e.pop("_t")
        # both timestamp forms of the contract
        e["timestamp"] = t if i % 2 else format_rfc3339(t)
    return pop


def _events(
    rng: np.random.Generator,
    uid: str,
    spec: PersonaSpec,
    lo: int,
    hi: int,
    activity: float,
    tz: str,
    platform: str,
) -> Iterator[dict[str, Any]]:
    span_days = (hi - lo) / _DAY_MS
    offset_h = {"UTC": 0, "Europe/Berlin": -1, "America/New_York": 5, "Asia/Tokyo": -9}[tz]
    for i, (etype, per_day) in enumerate(spec.rates.items()):
        n = int(i == 0) if spec.once else int(rng.poisson(per_day * activity * span_days))
        if n == 0:
            continue
        days = span_days / 4 if spec.once else span_days
        day = rng.integers(0, max(1, int(np.ceil(days))), size=n)
        # weekend boost: re-draw some weekday events onto the weekend
        hour = rng.integers(spec.hours[0], spec.hours[1], size=n)
        t = lo + day * _DAY_MS + ((hour + offset_h) % 24) * _HOUR_MS + rng.integers(0, _HOUR_MS, size=n)
        if spec.weekend_boost > 1.0:
            weekday = ((t // _DAY_MS) + 3) % 7
            move = (weekday < 5) & (rng.random(n) < 1 - 1 / spec.weekend_boost)
            t = t + move * ((5 - weekday) % 7) * _DAY_MS
        elif spec.weekend_boost < 1.0:  # a weekday habit: most weekend events move to the Monday after
            weekday = ((t // _DAY_MS) + 3) % 7
            move = (weekday >= 5) & (rng.random(n) < 1 - spec.weekend_boost)
            t = t + move * (7 - weekday) * _DAY_MS
        for ti in t.tolist():
            if not lo <= ti < hi:
                continue
            ev: dict[str, Any] = {
                "_t": int(ti),
                "user_id": uid,
                "event_type": etype,
                "session_id": f"{uid}-{ti // (6 * _HOUR_MS)}",
                "context": {"platform": platform, "timezone": tz},
            }
            if etype in spec.valued:
                ev["value"] = round(float(rng.gamma(2.0, spec.spend / 2.0)), 2)
            yield ev
