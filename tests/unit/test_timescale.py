"""Learned time scales: the rhythm measured, the half-lives it calls for, and states carried from one set of
half-lives to the next without their events."""

from __future__ import annotations

import numpy as np
import pytest

from worker import codec
from worker.changes import InputRecord, Segmenter
from worker.clustering import ModelSnapshot
from worker.clustering.trainer import Trainer
from worker.events.ingest import UserEvent
from worker.features import FeatureSpace
from worker.features.state import UserState, apply_event, rescale, to_scale
from worker.features.timescale import REFERENCE_GAP_MS, Rhythm, learned_half_lives
from worker.features.wire import decode, encode
from worker.segments.rules import rule_features
from worker.settings import Settings

DAY = 86_400_000
T0 = 1_767_225_600_000
PROVISIONAL = (1.0 * DAY, 7.0 * DAY)


def build(times: list[int], half_lives: tuple[float, ...], value: float = 10.0) -> UserState:
    state = UserState(len(half_lives))
    for i, t in enumerate(times):
        etype = "view" if i % 3 == 0 else "buy"
        apply_event(state, UserEvent("u", etype, t, value, None, None), half_lives, 12, 1_800_000)
    return state


def test_half_lives_follow_the_streams_gap_in_powers_of_two() -> None:
    assert learned_half_lives(PROVISIONAL, REFERENCE_GAP_MS) == PROVISIONAL
    assert learned_half_lives(PROVISIONAL, 1.3 * REFERENCE_GAP_MS) == PROVISIONAL  # near the reference: unchanged
    assert learned_half_lives(PROVISIONAL, 0.0) == PROVISIONAL  # nothing measured
    assert learned_half_lives(PROVISIONAL, 30 * DAY) == (128.0 * DAY, 896.0 * DAY)  # a purchase every month
    assert learned_half_lives(PROVISIONAL, 0.25 * REFERENCE_GAP_MS) == PROVISIONAL  # ten a day: never shorter
    assert learned_half_lives(PROVISIONAL, 1e-6) == PROVISIONAL
    assert learned_half_lives(PROVISIONAL, 1e15)[0] == 1024 * DAY


def test_the_pooled_gap_does_not_shrink_with_a_short_window() -> None:
    """A user seen 30 days after the first event with one repeat has a pooled gap of 30 days; the median of mean
    gaps only sees the gap between the two events."""
    rhythm = Rhythm()
    one_repeat = build([T0, T0 + 2 * DAY], PROVISIONAL)
    rhythm.add(one_repeat, T0 + 30 * DAY)
    rhythm.add(build([T0], PROVISIONAL), T0 + 30 * DAY)  # no repeat yet: exposure without events
    assert rhythm.median_gap_ms() == 2 * DAY
    assert rhythm.pooled_gap_ms() == pytest.approx(60 * DAY)
    assert Rhythm().pooled_gap_ms() == 0.0 == Rhythm().median_gap_ms()


@pytest.mark.parametrize(
    ("target", "rel"),
    # shorter half-lives than the events' spacing (a view a day, a half-day half-life) depend on where the last
    # event fell, which the steady estimate cannot know: a looser bound
    [((2.0 * DAY, 14.0 * DAY), 0.12), ((64.0 * DAY, 448.0 * DAY), 0.12), ((0.5 * DAY, 3.5 * DAY), 0.25)],
)
def test_a_steady_user_converted_is_close_to_one_built_under_the_new_half_lives(
    target: tuple[float, ...], rel: float
) -> None:
    times = [T0 + i * DAY // 3 for i in range(180)]  # three events a day for sixty days
    converted = build(times, PROVISIONAL)
    rescale(converted, PROVISIONAL, target)
    direct = build(times, target)
    for etype, counts in direct.rates.items():
        assert converted.rates[etype] == pytest.approx(counts, rel=rel)
    assert converted.spend == pytest.approx(direct.spend, rel=rel)
    assert converted.sessions == pytest.approx(direct.sessions, rel=rel)
    assert sum(converted.daypart) == pytest.approx(sum(direct.daypart), rel=rel)


def test_conversion_never_invents_events() -> None:
    burst = [T0] + [T0 + 50 * DAY + i * 3_600_000 for i in range(20)]  # one event, then twenty in a day
    state = build(burst, PROVISIONAL)
    rescale(state, PROVISIONAL, (1024.0 * DAY, 7168.0 * DAY))
    assert sum(c[-1] for c in state.rates.values()) <= state.n + 1e-9
    assert state.spend[-1] <= state.value_total + 1e-9
    one = build([T0], PROVISIONAL)
    rescale(one, PROVISIONAL, (32.0 * DAY, 224.0 * DAY))
    assert one.rates == {"view": [1.0, 1.0]}  # one event, just now: one under any half-life
    same = build(burst, PROVISIONAL)
    rescale(same, PROVISIONAL, PROVISIONAL)
    assert same.rates == build(burst, PROVISIONAL).rates


def test_the_mark_says_which_half_lives_a_state_is_under_and_survives_the_wire() -> None:
    learned = (32.0 * DAY, 224.0 * DAY)
    state = build([T0, T0 + 10 * DAY, T0 + 40 * DAY], PROVISIONAL)
    assert state.half_lives is None  # under the provisional ones
    to_scale(state, PROVISIONAL, learned)
    assert state.half_lives == learned
    assert decode(encode(state)).half_lives == learned
    assert UserState.from_fields(codec.loads(codec.dumps(state.to_fields()))).half_lives == learned
    before = state.rates["buy"][:]
    to_scale(state, PROVISIONAL, learned)  # already there: untouched
    assert state.rates["buy"] == before
    to_scale(state, PROVISIONAL, PROVISIONAL)  # back to the provisional: unmarked again
    assert state.half_lives is None and decode(encode(state)).half_lives is None


def test_rules_see_their_own_half_lives_whatever_the_state_is_kept_under() -> None:
    learned = (2.0 * DAY, 14.0 * DAY)
    times = [T0 + i * DAY // 3 for i in range(90)]
    kept = build(times, PROVISIONAL)
    to_scale(kept, PROVISIONAL, learned)
    feats = rule_features(kept, times[-1], PROVISIONAL, kept.half_lives)
    direct = rule_features(build(times, PROVISIONAL), times[-1], PROVISIONAL)
    assert set(feats) == set(direct) and "count_7d_buy" in feats
    assert feats["count_7d_buy"] == pytest.approx(direct["count_7d_buy"], rel=0.15)
    assert kept.half_lives == learned  # the state itself is not touched


def sparse_population(users: int, gap_days: float, seed: int = 0) -> list[tuple[str, UserState, int]]:
    """Buyers every ``gap_days`` on average (two kinds: small and large baskets), sampled at their last event."""
    rng = np.random.default_rng(seed)
    out = []
    for u in range(users):
        n = int(rng.integers(3, 8))
        times = sorted(T0 + int(x) for x in rng.uniform(0, n * gap_days * DAY, size=n))
        state = build(times, PROVISIONAL, value=20.0 if u % 2 else 200.0)
        out.append((f"u{u}", state, times[-1] + int(gap_days * DAY)))
    return out


def test_the_first_model_learns_half_lives_from_a_sparse_stream_and_converts_its_samples() -> None:
    s = Settings(warmup_samples=100, k_max=4)
    samples = sparse_population(150, gap_days=40.0)
    snap = Trainer(s).add(samples)
    assert snap is not None
    assert min(snap.space.half_lives_ms) >= 64 * DAY  # months, not a day
    assert all(st.half_lives == snap.space.half_lives_ms for _, st, _ in samples)
    fixed = Trainer(Settings(warmup_samples=100, k_max=4, half_lives_days=(1.0, 7.0))).add(
        sparse_population(150, gap_days=40.0)
    )
    assert fixed is not None and fixed.space.half_lives_ms == PROVISIONAL  # the operator's win


def model_under(half_lives: tuple[float, ...]) -> ModelSnapshot:
    space = FeatureSpace(("buy", "view"), half_lives)
    d = space.dim
    centroids = np.vstack([np.zeros(d), np.ones(d)])
    return ModelSnapshot(1, space, np.zeros(d), np.ones(d), centroids, ("p1", "p2"), ("a", "b"), 100, 3)


def record(uid: str, t: int, offset: int) -> InputRecord:
    value = codec.dumps({"user_id": uid, "event_type": "buy", "timestamp": t, "value": 5.0})
    return InputRecord(value, uid.encode(), 0, offset, 0, offset, 0.0)


def test_a_model_with_other_half_lives_converts_each_state_when_it_is_next_touched() -> None:
    s = Settings(partitions=1)
    store: dict[str, UserState] = {}
    seg = Segmenter(s, store, lambda _u: 0)
    res = seg.process([record("a", T0 + i * DAY, i) for i in range(4)], 2**62, 0.0)
    store.update(res.dirty)
    assert store["a"].half_lives is None
    learned = (32.0 * DAY, 224.0 * DAY)
    seg.set_model(model_under(learned))
    assert seg.time_scales()["half_lives_days"] == [32.0, 224.0] and seg.time_scales()["half_lives_learned"]
    assert seg.dormancy.floor_ms >= 224 * DAY  # no dormancy before the slowest half-life
    res = seg.process([record("a", T0 + 5 * DAY, 4), record("b", T0 + 5 * DAY, 5)], 2**62, 0.0)
    a, b = res.dirty["a"], res.dirty["b"]
    assert a.half_lives == learned == b.half_lives
    direct = UserState(2)
    for i in (0, 1, 2, 3, 5):
        apply_event(direct, UserEvent("a", "buy", T0 + i * DAY, 5.0, None, None), learned, 12, 1_800_000)
    assert a.rates["buy"] == pytest.approx(direct.rates["buy"], rel=0.1)  # five events under months: about five
    assert decode(encode(a)).half_lives == learned  # a restart reads it under the same half-lives


def test_before_the_first_model_a_silence_is_no_lapse_when_dormancy_follows_the_rhythm() -> None:
    s = Settings(partitions=1)
    store: dict[str, UserState] = {}
    seg = Segmenter(s, store, lambda _u: 0)
    res = seg.process([record("a", T0, 0)], 2**62, 0.0)
    store.update(res.dirty)
    res = seg.process([record("b", T0 + 60 * DAY, 1)], 2**62, 0.0)  # two months later
    assert all(codec.loads(c)["to_segment"] != "dormant" for _, c, _ in res.changes)
    assert res.dirty["a"].due > T0 + 7 * DAY  # checked again a floor after the first check (lapsing, at 7 days)
    fixed = Segmenter(s.replace(dormant_after_days=14.0), {}, lambda _u: 0)
    store = {}
    fixed.store = store
    store.update(fixed.process([record("a", T0, 0)], 2**62, 0.0).dirty)
    res = fixed.process([record("b", T0 + 60 * DAY, 1)], 2**62, 0.0)
    assert [codec.loads(c)["to_segment"] for _, c, _ in res.changes if codec.loads(c)["user_id"] == "a"] == [
        "lapsing",
        "dormant",
    ]


def test_the_first_model_after_a_replay_runs_the_silence_checks_the_log_has_passed() -> None:
    """A log replayed before the first model: the model places every waiting customer as of their last purchase,
    then moves on those whose silence the log already passed (no batch comes later to do it)."""
    s = Settings(partitions=1, min_events=2)
    store: dict[str, UserState] = {}
    seg = Segmenter(s, store, lambda _u: 0)
    early = [record("gone", T0 + i * DAY, i) for i in range(3)]
    late = [record("here", T0 + (300 + i) * DAY, 3 + i) for i in range(3)]
    res = seg.process([*early, *late], 2**62, 0.0)
    store.update(res.dirty)
    assert {codec.loads(c)["to_segment"] for _, c, _ in res.changes} == {"new"}
    seg.set_model(model_under((32.0 * DAY, 224.0 * DAY)))
    res = seg.sweep({0}, 0.0)
    store.update(res.dirty)
    chains: dict[str, list[str]] = {}
    for _, c, _ in res.changes:
        doc = codec.loads(c)
        chains.setdefault(doc["user_id"], []).append(doc["to_segment"])
    assert chains["gone"][-2:] == ["lapsing", "dormant"] and chains["gone"][0].startswith("p")
    assert len(chains["here"]) == 1 and chains["here"][0].startswith("p")
    assert store["gone"].segment == "dormant" and store["here"].segment == chains["here"][0]
