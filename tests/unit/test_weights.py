"""Telling features: a feature whose values fall in clumps across users weighs more than one that is noise."""

from __future__ import annotations

import numpy as np
import pytest

from worker import codec
from worker.clustering import ModelSnapshot
from worker.clustering.weights import FLOOR, telling_weights, within_user_reliability
from worker.events.ingest import UserEvent
from worker.features.space import LEGACY_FIXED_FEATURES, FeatureSpace
from worker.features.state import UserState, apply_event

DAY = 86_400_000


def standardised(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = (x - x.mean(0)) / x.std(0)
    return out


def test_clumped_features_weigh_most_and_noise_least() -> None:
    rng = np.random.default_rng(3)
    n = 2000
    basket = rng.choice([10.0, 40.0, 160.0, 640.0], size=n)
    x = np.column_stack(
        [
            np.log(basket) + rng.normal(0, 0.2, n),  # four clumps: what tells the groups apart
            rng.normal(0, 1, n),  # noise
            rng.normal(5, 2, n),  # noise on another scale
            (rng.random(n) < 0.25) * (1.0 + rng.normal(0, 0.1, n)),  # a rare type one group uses
        ]
    )
    w = telling_weights(standardised(x), np.random.default_rng(0))
    assert w[0] == pytest.approx(1.0) or w[3] == pytest.approx(1.0)
    assert w[0] > 0.5 and w[3] > 0.5
    assert w[1] < 0.25 and w[2] < 0.25 and min(w) >= FLOOR
    flat = telling_weights(np.zeros((50, 2)), np.random.default_rng(0))
    assert flat.tolist() == [1.0, 1.0]  # nothing varies: nothing to prefer


def test_value_per_event_is_the_decayed_value_of_what_a_user_does() -> None:
    hl = (DAY, 7.0 * DAY)
    small, big = UserState(2), UserState(2)
    for i in range(6):
        t = 1_767_225_600_000 + i * DAY
        apply_event(small, UserEvent("a", "buy", t, 10.0, None, None), hl, 12, 1_800_000)
        apply_event(big, UserEvent("b", "buy", t, 160.0, None, None), hl, 12, 1_800_000)
        apply_event(big, UserEvent("b", "buy", t + 1, 160.0, None, None), hl, 12, 1_800_000)
    space = FeatureSpace(("buy",), hl)
    i = space.names.index("value_per_event")
    t_end = 1_767_225_600_000 + 9 * DAY
    assert space.row(small, t_end)[i] == pytest.approx(10.0)
    assert space.row(big, t_end)[i] == pytest.approx(160.0)  # twice as active, same value per purchase
    assert space.n_log == space.dim - 5  # a count-like feature: log-compressed like spend


def test_a_snapshot_from_before_value_per_event_still_loads() -> None:
    legacy = FeatureSpace(("buy",), (DAY, 7.0 * DAY), LEGACY_FIXED_FEATURES)
    assert "value_per_event" not in legacy.names
    d = legacy.dim
    snap = ModelSnapshot(3, legacy, np.zeros(d), np.ones(d), np.zeros((2, d)), ("p1", "p2"), ("a", "b"), 10, 3)
    doc = codec.loads(snap.to_bytes())
    del doc["fixed_features"]  # written before the field existed
    back = ModelSnapshot.from_bytes(codec.dumps(doc))
    assert back.space.names == legacy.names and back.space.dim == d
    state = UserState(2)
    apply_event(state, UserEvent("a", "buy", 1_767_225_600_000, 5.0, None, None), (DAY, 7.0 * DAY), 12, 1_800_000)
    assert len(back.space.row(state, 1_767_225_600_000)) == d


def test_a_feature_that_swings_within_each_user_weighs_less_than_a_steady_one() -> None:
    rng = np.random.default_rng(5)
    n = 600
    groups = rng.choice([0.0, 3.0], size=n)
    steady_now, steady_before = groups + rng.normal(0, 0.1, n), groups + rng.normal(0, 0.1, n)
    # clumped across users too, but each user's value is redrawn from one sample to the next
    swinging_now, swinging_before = rng.choice([0.0, 3.0], size=n), rng.choice([0.0, 3.0], size=n)
    now = np.column_stack([steady_now, swinging_now])
    before = np.column_stack([steady_before, swinging_before])
    scale = now.std(0)
    r = within_user_reliability((now - before) / scale, (now - now.mean(0)) / scale)
    assert r[0] > 0.95 and r[1] < 0.2
    w = telling_weights(standardised(now), np.random.default_rng(0), r)
    assert w[0] == pytest.approx(1.0) and w[1] < 0.1
