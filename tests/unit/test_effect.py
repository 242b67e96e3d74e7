"""Campaign effectiveness on synthetic worlds with a known effect."""

from __future__ import annotations

import random

import pytest

from worker.triggers.effect import Cell, Exposure, Outcomes, Tally, effect

DAY = 86_400_000


def world(users: int, treated_rate: float, holdout_rate: float, seed: int) -> Tally:
    """Users exposed at t=0 with a 7-day purchase goal; treated ones buy with one probability, holdouts with
    another; some buy too late, some before the exposure, some read in the other order (goal event first)."""
    rng = random.Random(seed)
    tally = Tally()
    for u in range(users):
        holdout = rng.random() < 0.3
        out = Outcomes()
        exposure = Exposure("win-back", "dormant", holdout, send_at=10 * DAY, until=17 * DAY, goal="purchase")
        buys = rng.random() < (holdout_rate if holdout else treated_rate)
        when = 10 * DAY + rng.randint(0, 7 * DAY) if buys else rng.choice([9 * DAY, 18 * DAY])  # outside if not
        if u % 3 == 0:  # the goal event is read before the change that exposes the user
            out.event("purchase", when, {"purchase"})
            out.expose(exposure)
            tally.exposed(exposure)
        else:
            out.expose(exposure)
            tally.exposed(exposure)
            for e in out.event("purchase", when, {"purchase"}):
                tally.converted(e)
            assert out.event("purchase", when + 1, {"purchase"}) == []  # converts once
    return tally


def test_uplift_is_found_with_an_interval_that_covers_the_truth() -> None:
    (e,) = world(6000, treated_rate=0.30, holdout_rate=0.20, seed=1).effects()
    assert e.uplift is not None and e.ci95 is not None
    assert 0.07 < e.uplift < 0.13
    assert e.ci95[0] < 0.10 < e.ci95[1] and e.ci95[0] > 0  # significant, and covers the true uplift
    assert e.to_json()["treated"]["users"] + e.to_json()["holdout"]["users"] == 6000


def test_no_effect_gives_an_interval_around_zero() -> None:
    (e,) = world(6000, treated_rate=0.25, holdout_rate=0.25, seed=4).effects()
    assert e.ci95 is not None and e.ci95[0] < 0 < e.ci95[1]


def test_small_or_missing_groups_have_no_interval() -> None:
    assert effect("c", "p", Cell(10, 3), Cell(5, 1)).ci95 is None
    assert effect("c", "p", Cell(100, 30), Cell(0, 0)).uplift is None


def test_goal_memory_and_expiry_are_bounded() -> None:
    out = Outcomes()
    for t in range(100):
        out.event("purchase", t, {"purchase"})
    assert len(out.goals["purchase"]) == 16 and out.event("view", 5, {"purchase"}) == []
    out.expose(Exposure("c", "p", False, 0, 50, "purchase"))
    out.expose(Exposure("c", "p", False, 200, 300, "purchase"))
    assert [e.converted for e in out.exposures] == [False, False]  # only times 84..99 remembered
    out.expire(100)
    assert [e.send_at for e in out.exposures] == [200]
    assert Exposure.from_fields(out.exposures[0].to_fields()) == out.exposures[0]


@pytest.mark.parametrize("holdout", [True, False])
def test_tally_counts_a_conversion_known_at_exposure_once(holdout: bool) -> None:
    tally, out = Tally(), Outcomes()
    out.event("purchase", 5, {"purchase"})
    e = Exposure("c", "p", holdout, 0, 10, "purchase")
    assert out.expose(e)
    tally.exposed(e)
    assert out.event("purchase", 6, {"purchase"}) == []
    cell = tally.cell("c", "p", holdout)
    assert (cell.exposed, cell.converted) == (1, 1)
