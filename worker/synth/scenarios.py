"""Scenario worlds for ``segment-worker evaluate``: each one stresses one thing a segmentation can get wrong.

Persona definitions are drawn from the seed (event mix, rates, hours, spend, weekend habit, sizes) over one of
several product domains, so a default that only suits one hand-written world shows up as a bad score on the
others. ``reference`` is the fixed world of the demo.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from worker.synth.population import PERSONAS, PersonaSpec, World

DOMAINS: dict[str, tuple[tuple[str, ...], frozenset[str]]] = {
    # domain: (event types, types that carry a monetary value)
    "commerce": (
        (
            "view_product",
            "search",
            "add_to_cart",
            "wishlist",
            "coupon",
            "purchase",
            "return",
            "review",
            "compare",
            "view_category",
        ),
        frozenset({"purchase"}),
    ),
    "media": (
        (
            "play",
            "skip",
            "like",
            "add_playlist",
            "share",
            "follow_artist",
            "search",
            "download",
            "comment",
            "live_join",
        ),
        frozenset(),
    ),
    "gaming": (
        (
            "session_start",
            "level_up",
            "match_play",
            "match_win",
            "in_app_purchase",
            "ad_watch",
            "gift_send",
            "clan_chat",
            "daily_bonus",
            "tournament_join",
        ),
        frozenset({"in_app_purchase"}),
    ),
    "fintech": (
        (
            "login",
            "balance_check",
            "transfer",
            "card_payment",
            "savings_deposit",
            "invest_buy",
            "bill_pay",
            "statement_view",
            "support_chat",
            "crypto_trade",
        ),
        frozenset({"card_payment", "invest_buy"}),
    ),
}

_SYLLABLES = ("ka", "lo", "mi", "ren", "to", "su", "vel", "dra", "pin", "qo", "zu", "bar", "nex", "ily", "os")


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    build: Callable[[np.random.Generator], World]


def _shares(rng: np.random.Generator, k: int, skew: float) -> list[float]:
    """Unequal sizes: geometric-like with a random ratio, shuffled, none under 5 %."""
    ratio = rng.uniform(1.0 - skew, 1.0 - skew / 3)
    raw = np.array([ratio**i for i in range(k)])
    raw = np.maximum(raw / raw.sum(), 0.05)
    rng.shuffle(raw)
    shares: list[float] = (raw / raw.sum()).tolist()
    return shares


def random_personas(
    rng: np.random.Generator,
    k: int,
    vocabulary: tuple[str, ...],
    valued: frozenset[str],
    skew: float = 0.45,
    prefix: str = "persona",
) -> tuple[PersonaSpec, ...]:
    """``k`` personas over ``vocabulary``: each has its own signature type, one or two secondary types and the
    domain's common type at its own rate, its own active hours, spend and weekend habit."""
    order = [vocabulary[i] for i in rng.permutation(len(vocabulary))]
    common, signatures, others = order[-1], order[:k], order[k:-1] or order[:-1]
    shares = _shares(rng, k, skew)
    out = []
    for i in range(k):
        rates = {signatures[i]: float(rng.uniform(0.8, 2.5)), common: float(rng.uniform(0.2, 1.5))}
        for etype in rng.choice(others, size=int(rng.integers(1, 3)), replace=False).tolist():
            rates.setdefault(etype, float(rng.uniform(0.15, 1.0)))
        start = int(rng.integers(0, 19))
        out.append(
            PersonaSpec(
                f"{prefix}-{i + 1}",
                shares[i],
                rates,
                (start, min(24, start + int(rng.integers(4, 9)))),
                spend=float(rng.choice([15.0, 40.0, 120.0, 300.0])),
                weekend_boost=float(rng.choice([0.5, 1.0, 1.0, 1.5, 2.0])),
                valued=valued,
            )
        )
    return tuple(out)


def _domain(rng: np.random.Generator) -> tuple[tuple[str, ...], frozenset[str]]:
    return DOMAINS[sorted(DOMAINS)[int(rng.integers(len(DOMAINS)))]]


def _drawn(rng: np.random.Generator, k: int, skew: float = 0.45) -> tuple[PersonaSpec, ...]:
    vocab, valued = _domain(rng)
    return random_personas(rng, k, vocab, valued, skew)


def _stable(rng: np.random.Generator) -> World:
    return World(_drawn(rng, int(rng.integers(4, 7)), skew=0.6), switch_share=0.0, silent_share=0.0)


def _switching(rng: np.random.Generator) -> World:
    return World(_drawn(rng, 5), switch_share=0.15, silent_share=0.0)


def _silent(rng: np.random.Generator) -> World:
    return World(_drawn(rng, 5), switch_share=0.0, silent_share=0.10)


def _emerging(rng: np.random.Generator) -> World:
    vocab, valued = _domain(rng)
    everyone = random_personas(rng, 5, vocab, valued)
    # the fifth persona appears only mid-stream, joined by new users
    return World(everyone[:4], switch_share=0.0, silent_share=0.0, emerging=everyone[4], emerging_share=0.15)


def _split(rng: np.random.Generator) -> World:
    vocab, valued = _domain(rng)
    everyone = random_personas(rng, 5, vocab, valued)
    # half the users of the largest of four personas take up a fifth behaviour mid-stream: one persona goes two ways
    largest = max(range(4), key=lambda i: everyone[i].share)
    return World(everyone[:4], 0.0, 0.0, diverging=everyone[4], diverge_from=largest, diverge_share=0.5)


def _weekly(rng: np.random.Generator) -> World:
    # a strong weekly rhythm: most personas live at the weekend (days of near-silence in between), one on weekdays
    personas = [replace(p, weekend_boost=float(rng.uniform(3.0, 5.0))) for p in _drawn(rng, 5)]
    personas[-1] = replace(personas[-1], weekend_boost=0.2)
    return World(tuple(personas), switch_share=0.05, silent_share=0.0)


def _weekend_twins(rng: np.random.Generator) -> World:
    personas = list(_drawn(rng, 4))
    # two personas that do the same things; one mostly at the weekend, one mostly on weekdays
    base = personas[0]
    personas[0] = replace(base, weekend_boost=4.0)
    personas.append(replace(base, name=f"{base.name}-weekday", weekend_boost=0.2))
    return World(tuple(personas), switch_share=0.0, silent_share=0.0)


def _noisy(rng: np.random.Generator) -> World:
    return World(_drawn(rng, 5), switch_share=0.0, silent_share=0.0, low_activity_share=0.3)


def _unseen_vocabulary(rng: np.random.Generator) -> World:
    names: set[str] = set()
    while len(names) < 16:
        parts = rng.choice(_SYLLABLES, size=int(rng.integers(2, 4))).tolist()
        names.add("".join(parts) + "_" + str(rng.choice(["open", "send", "tap", "start", "buy", "rate"])))
    vocab = tuple(sorted(names))
    return World(random_personas(rng, 6, vocab, frozenset({vocab[0]})), switch_share=0.05, silent_share=0.05)


def _lapsing(rng: np.random.Generator) -> World:
    # heavy users (about ten events a day), 10 % of whom stop: a week or two of silence is a lapse for them
    personas = [replace(p, rates={t: 4.0 * r for t, r in p.rates.items()}) for p in _drawn(rng, 5)]
    return World(tuple(personas), switch_share=0.0, silent_share=0.10)


def _monthly(rng: np.random.Generator) -> World:
    # a shop over a year: repeat buyers every few weeks to months with their own basket sizes, and many customers
    # who buy once (early, like a cohort) and never again
    def buyer(name: str, share: float, every_days: float, spend: float, views: float = 0.0) -> PersonaSpec:
        rates = {"purchase": 1.0 / every_days, **({"view_product": views} if views else {})}
        start = int(rng.integers(8, 14))
        return PersonaSpec(name, share, rates, (start, start + 8), spend=spend, valued=frozenset({"purchase"}))

    personas = (
        buyer("regulars", 0.2, float(rng.uniform(12, 20)), float(rng.uniform(25, 50)), views=0.3),
        buyer("big baskets", 0.15, float(rng.uniform(40, 60)), float(rng.uniform(200, 350))),
        buyer("occasional", 0.2, float(rng.uniform(70, 100)), float(rng.uniform(20, 60))),
        replace(buyer("one-time", 0.45, 1.0, float(rng.uniform(20, 80))), once=True),
    )
    return World(personas, switch_share=0.0, silent_share=0.0, span=13.0)


def _mixed_rhythm(rng: np.random.Generator) -> World:
    # daily users and monthly users in one stream (each with their own habits)
    daily = list(_drawn(rng, 3))
    monthly = [
        replace(p, name=f"{p.name}-monthly", rates={t: r / 30.0 for t, r in p.rates.items()}) for p in _drawn(rng, 2)
    ]
    return World((*daily, *monthly), switch_share=0.05, silent_share=0.05, span=4.0)


def _rare_telling(rng: np.random.Generator) -> World:
    # everyone does the same frequent things at the same rates; what tells the personas apart is one rare type
    # each (a few times a month) — below the stream's most frequent types
    vocab, valued = _domain(rng)
    order = [vocab[i] for i in rng.permutation(len(vocab))]
    common = {etype: float(rng.uniform(0.8, 2.5)) for etype in order[:6]}
    telling = order[6:10]
    shares = _shares(rng, len(telling), 0.45)
    start = int(rng.integers(6, 14))
    personas = tuple(
        PersonaSpec(
            f"rare-{etype}",
            shares[i],
            {**common, etype: float(rng.uniform(0.1, 0.25))},
            (start, start + 8),
            spend=40.0,
            valued=valued,
        )
        for i, etype in enumerate(telling)
    )
    return World(personas, switch_share=0.05, silent_share=0.0)


def _basket(rng: np.random.Generator) -> World:
    # the same behaviour at the same rates; only the value of a purchase differs (a factor of four between
    # neighbours)
    vocab, valued = DOMAINS["commerce"]
    base = random_personas(rng, 1, vocab, valued)[0]
    rates = {**base.rates, "purchase": float(rng.uniform(0.4, 0.8))}
    spends = (10.0, 40.0, 160.0, 640.0)
    shares = _shares(rng, len(spends), 0.45)
    personas = tuple(
        replace(base, name=f"basket-{spend:g}", share=shares[i], rates=rates, spend=spend)
        for i, spend in enumerate(spends)
    )
    return World(personas, switch_share=0.0, silent_share=0.0)


def _reference(rng: np.random.Generator) -> World:
    return World(PERSONAS)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("stable", "stable personas of unequal sizes", _stable),
        Scenario("switching", "15% of users switch persona mid-way", _switching),
        Scenario("silent", "10% of users go silent", _silent),
        Scenario("emerging", "a new persona appears mid-stream, joined by 15% new users", _emerging),
        Scenario("split", "half the users of the largest persona take up a new behaviour mid-stream", _split),
        Scenario("weekly", "weekend-heavy personas (near-silent weekdays), one weekday persona, 5% switch", _weekly),
        Scenario("twins", "two personas that differ only by weekend vs weekday habit", _weekend_twins),
        Scenario("noisy", "30% of users with a fifth of the usual activity", _noisy),
        Scenario("vocabulary", "16 made-up event types, 6 personas, 5% switch, 5% silent", _unseen_vocabulary),
        Scenario("lapsing", "about ten events a day per user, 10% go silent", _lapsing),
        Scenario("monthly", "a shop over a year: purchases every weeks to months, 45% buy once", _monthly),
        Scenario("mixed", "daily and monthly users in one stream, 5% switch, 5% silent", _mixed_rhythm),
        Scenario("rare", "personas told apart only by one rare event type each", _rare_telling),
        Scenario("basket", "personas told apart only by the value of a purchase", _basket),
        Scenario("reference", "the demo's world: 5 personas, 10% switch, 8% silent", _reference),
    )
}


def world(name: str, seed: int) -> World:
    """The world of scenario ``name`` drawn with ``seed`` (the population is drawn with the same seed)."""
    return SCENARIOS[name].build(np.random.default_rng([seed, 7919]))


# the worlds `segment-worker evaluate` runs unless told otherwise, and README's Quality tables show (`twins` and
# `reference` on request)
DEFAULT_SCENARIOS = (
    "stable",
    "switching",
    "silent",
    "emerging",
    "weekly",
    "noisy",
    "vocabulary",
    "lapsing",
    "monthly",
    "mixed",
    "rare",
    "basket",
)
