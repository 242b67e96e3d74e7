from __future__ import annotations

import itertools
import math
import random
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from tests.unit.builders import HL, apply, event, fresh
from worker.events.timefmt import utc_offset_ms
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


@pytest.mark.parametrize(
    ("zone", "years"),
    [
        ("Europe/Berlin", (2025, 2027)),
        ("America/New_York", (2025, 2027)),
        ("Australia/Lord_Howe", (2025, 2027)),  # moves by half an hour
        ("America/St_Johns", (2025, 2027)),  # -3:30 / -2:30
        ("Asia/Kathmandu", (1985, 1986)),  # +5:30 -> +5:45 on 1986-01-01
        ("Africa/Monrovia", (1972, 1972)),  # -0:44:30 -> 0:00 at 00:44:30 UTC: inside a quarter hour
    ],
)
def test_local_time_is_the_calendars_around_every_change_of_offset(zone: str, years: tuple[int, int]) -> None:
    """The offset is looked up once per quarter hour: it must still be the calendar's at each millisecond around
    a change of offset, and at random times."""
    tz = ZoneInfo(zone)
    rng = random.Random(zone)
    times = [rng.randrange(0, 4_102_444_800_000) for _ in range(2000)]
    for change in _offset_changes(tz, *years):
        times += [change + d for d in (-900_001, -900_000, -1, 0, 1, 899_999, 900_000)]
    for ts in times:
        local = datetime.fromtimestamp(ts / 1000, tz=tz)
        offset = local.utcoffset()
        assert offset is not None
        assert utc_offset_ms(zone, ts) == offset.total_seconds() * 1000, ts
        assert local_hour_weekday(ts, zone) == (local.hour, local.weekday()), ts


def _offset_changes(tz: ZoneInfo, first_year: int, last_year: int) -> list[int]:
    """Epoch ms of each change of the zone's UTC offset in those years (found to the millisecond by bisection)."""
    start = int(datetime(first_year, 1, 1, tzinfo=UTC).timestamp() * 1000)
    end = int(datetime(last_year + 1, 1, 1, tzinfo=UTC).timestamp() * 1000)
    offset = lambda ms: datetime.fromtimestamp(ms / 1000, tz=tz).utcoffset()  # noqa: E731
    changes = []
    for lo in range(start, end, DAY):
        hi = lo + DAY
        if offset(lo) != offset(hi):
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if offset(mid) == offset(lo) else (lo, mid)
            changes.append(hi)
    assert changes, "the zone should change its offset in those years"
    return changes


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
