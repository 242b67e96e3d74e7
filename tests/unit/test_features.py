from __future__ import annotations

import itertools
import math

import pytest

from tests.unit.builders import HL, apply, event, fresh
from worker.features import FeatureSpace, UserState, Watermarks
from worker.features.space import choose_vocabulary
from worker.features.state import OTHER, advance, features_at, local_hour_weekday

DAY = 86_400_000
T0 = 1_767_225_600_000  # Thursday 2026-01-01T00:00Z


def test_decay_halves_after_one_half_life() -> None:
    s = apply(fresh(), event(T0))
    advance(s, T0 + DAY, HL)
    assert s.rates["view"][0] == pytest.approx(0.5)
    assert s.rates["view"][1] == pytest.approx(2 ** (-1 / 7))


def test_result_does_not_depend_on_arrival_order() -> None:
    times = [T0, T0 + 5 * 3_600_000, T0 + DAY, T0 + 3 * DAY]
    results = []
    for order in itertools.permutations(times):
        s = apply(fresh(), *(event(t, value=1.0) for t in order))
        advance(s, T0 + 4 * DAY, HL)
        results.append((s.rates["view"], s.spend, s.n, s.first_ts, s.last_ts))
    for r in results[1:]:
        assert r[0] == pytest.approx(results[0][0])
        assert r[1] == pytest.approx(results[0][1])
        assert r[2:] == results[0][2:]


def test_types_per_user_are_bounded_and_folded_into_other() -> None:
    s = apply(fresh(), *(event(T0 + i, etype=f"t{i}") for i in range(10)))
    named = [k for k in s.rates if k != OTHER]
    assert len(named) == 4
    assert sum(c[-1] for c in s.rates.values()) == pytest.approx(10, rel=1e-6)


def test_sessions_by_id_and_by_gap() -> None:
    s = apply(fresh(), event(T0, session="a"), event(T0 + 1000, session="a"), event(T0 + 2000, session="b"))
    assert s.sessions == pytest.approx(2, rel=1e-5)
    g = apply(fresh(), event(T0), event(T0 + 60_000), event(T0 + 3 * 3_600_000))
    assert g.sessions == pytest.approx(1 + 2 ** (-3 / (7 * 24)), rel=1e-6)  # the first one decayed 3 h


def test_local_time_of_day_uses_the_users_timezone() -> None:
    assert local_hour_weekday(T0, None) == (0, 3)
    assert local_hour_weekday(T0, "Asia/Tokyo") == (9, 3)
    assert local_hour_weekday(T0, "Not/AZone") == (0, 3)  # unknown zone: UTC, not an error


def test_dedupe_fence() -> None:
    s = fresh()
    assert not s.seen(0, 10)
    s.fence(0, 10)
    assert s.seen(0, 10) and s.seen(0, 3) and not s.seen(0, 11) and not s.seen(1, 3)


def test_wire_round_trip() -> None:
    s = apply(fresh(), event(T0, value=3.0, tz="Europe/Berlin"))
    s.fence(2, 99)
    back = UserState.from_fields(s.to_fields())
    assert back.to_fields() == s.to_fields()


def test_features_at_reports_recency_and_spend() -> None:
    s = apply(fresh(), event(T0, "purchase", value=10.0))
    f = features_at(s, T0 + 2 * DAY, HL)
    assert f["days_since_last_event"] == pytest.approx(2.0)
    assert f["monetary_total"] == 10.0
    assert f["decayed_spend"]["1d"] == pytest.approx(2.5, rel=1e-3)


def test_feature_space_rows() -> None:
    space = FeatureSpace(("view", "buy"), HL)
    s = apply(fresh(), event(T0), event(T0 + 1, "other"))
    raw = space.row(s, T0 + DAY)
    assert len(raw) == space.dim == len(space.names)
    x = space.matrix([s], [T0 + DAY])[0]
    assert x[space.names.index("rate_1d:view")] == pytest.approx(math.log1p(0.5))
    assert x[space.names.index("rate_1d:buy")] == 0.0
    assert x[space.names.index("rate_other")] == pytest.approx(math.log1p(2 ** (-1 / 7)), rel=1e-3)
    assert x[space.names.index("days_since_last_event")] == pytest.approx(math.log1p(1.0), rel=1e-6)


def test_vocabulary_is_the_most_active_types() -> None:
    a = apply(fresh(), *(event(T0 + i, "view") for i in range(5)), event(T0 + 9, "buy"))
    b = apply(fresh(), *(event(T0 + i, "like") for i in range(3)))
    assert choose_vocabulary([a, b], 2) == ["view", "like"]


def test_watermarks_only_move_forward_per_partition() -> None:
    w = Watermarks(lateness_ms=1000)
    assert w.get(0) == 0
    w.observe(0, 10_000)
    w.observe(0, 5_000)
    w.observe(1, 20_000)
    assert (w.get(0), w.get(1)) == (9_000, 19_000)
