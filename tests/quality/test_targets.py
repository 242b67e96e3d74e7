"""Every synthetic world scored against README's targets, with default settings (the core engine: the same pure
code as the worker, in-process, deterministic; seed 1 of each world, about three minutes).

A default that misses a target on a world is listed in ``KNOWN_MISSES`` with README's reason. The test asserts
that it still misses, so fixing one fails here until the entry (and README's explanation) is removed: a target is
never loosened silently.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from tests.parallel import Key, submitted
from worker.evaluation.engines import encode, run_core
from worker.evaluation.run import sized
from worker.evaluation.score import TARGETS, misses, score
from worker.settings import Settings
from worker.synth.population import generate_world
from worker.synth.scenarios import DEFAULT_SCENARIOS, world

pytestmark = pytest.mark.quality

USERS, DAYS, SEED = 1_000, 28.0, 1  # README's Quality table, seed 1
# the worlds' order of submission: the longest first, so that two processes finish together
SLOWEST_FIRST = ("rare", "lapsing", *(n for n in DEFAULT_SCENARIOS if n not in ("rare", "lapsing")))

_FLAPS = "README Quality, monthly: one set of half-lives for purchases every 12-20 days swings their rates"
_TWO_RHYTHMS = "README Quality, mixed: one stream, two rhythms, one set of half-lives"
_RARE = "README Quality, rare: a rare type a few times a month only shows under the slow half-life"
_BASKET = "README Quality, basket: value per event splits cheap from dear baskets, not four steps"
_NOISY = "README Quality, noisy s1: low-activity users between personas; a split after the first fit"
KNOWN_MISSES: dict[str, dict[str, str]] = {
    "noisy": {"spurious_per_user": _NOISY, "id_stability": _NOISY},
    "monthly": {m: _FLAPS for m in ("ari", "spurious_per_user", "id_stability")},
    "mixed": {m: _TWO_RHYTHMS for m in ("ari", "ari_ratio", "switch_detected", "spurious_per_user", "id_stability")}
    | {"personas": _TWO_RHYTHMS},
    "rare": {m: _RARE for m in ("ari", "switch_detected", "spurious_per_user", "id_stability", "personas")},
    "basket": {m: _BASKET for m in ("ari", "ari_ratio", "spurious_per_user", "personas")},
}


def world_misses(name: str) -> dict[str, Any]:
    """The targets seed 1 of world ``name`` misses (run in a child process)."""
    pop = generate_world(world(name, SEED), USERS, DAYS, SEED)
    s = sized(Settings(), USERS)
    return misses(score(pop, run_core(s, encode(pop.events)), s))


@pytest.fixture(scope="module")
def scored(request: pytest.FixtureRequest) -> Iterator[dict[Key, Future[dict[str, Any]]]]:
    """Every selected world scored at once, two at a time (about three minutes one after another)."""
    with submitted(request, lambda _test, p: (world_misses, p["name"]), lambda j: SLOWEST_FIRST.index(j[1])) as run:
        yield run


@pytest.mark.parametrize("name", DEFAULT_SCENARIOS)
def test_world_meets_the_targets_or_misses_as_documented(name: str, scored: dict[Key, Future[dict[str, Any]]]) -> None:
    missed = scored[(world_misses, name)].result()
    known = KNOWN_MISSES.get(name, {})
    unexpected = {m: v for m, v in missed.items() if m not in known}
    fixed = sorted(set(known) - set(missed))
    assert not unexpected, f"{name}: misses {unexpected} (targets {TARGETS})"
    assert not fixed, f"{name}: {fixed} now met - remove them from KNOWN_MISSES and README's list of misses"
