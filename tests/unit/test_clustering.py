from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from worker import codec
from worker.clustering import ModelSnapshot
from worker.clustering.batch import (
    PAIRWISE_BLOCK,
    choose_k,
    fit_scores,
    kmeans,
    lloyd,
    pairwise_distances,
    silhouette,
    silhouettes_of,
    sq_distances,
    subsample,
)
from worker.clustering.trainer import Trainer
from worker.events.ingest import UserEvent
from worker.features import FeatureSpace, UserState, apply_event
from worker.settings import Settings

DAY = 86_400_000


def blobs(k: int, n: int, dim: int, seed: int, spread: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, size=(k, dim))
    labels = rng.integers(0, k, size=n)
    return centers[labels] + rng.normal(0, spread, size=(n, dim)), labels


@pytest.mark.parametrize(("k", "seed"), [(3, 1), (5, 2), (6, 3)])
def test_choose_k_finds_the_true_count(k: int, seed: int) -> None:
    x, _ = blobs(k, 900, 6, seed)
    assert choose_k(x, 2, 10, seed=0).k == k


def test_kmeans_and_silhouette() -> None:
    x, _ = blobs(3, 300, 4, 5)
    fit = kmeans(x, 3, np.random.default_rng(0))
    assert silhouette(x, fit.labels) > 0.7
    assert silhouette(x, np.zeros(len(x), dtype=int)) == -1.0


def test_fits_scored_on_one_sample_each_get_their_own_silhouette() -> None:
    """The sample's distances are computed once and shared; each fit's labels are its own."""
    x, _ = blobs(4, 600, 5, 7)
    rng = np.random.default_rng(0)
    sub = subsample(x, rng, size=400)
    fits = [kmeans(x, k, np.random.default_rng(k)) for k in (2, 3, 4)]
    shared = fit_scores(x, sub, fits)
    alone = [round(silhouette(sub.rows, lloyd(sub.rows, fit.centers, iters=0).labels), 4) for fit in fits]
    assert shared == alone and len(set(shared)) == 3
    tiny = dataclasses.replace(fits[2], labels=np.array([0] * (len(x) - 1) + [1]))  # a cluster of one row
    fresh = subsample(x, rng, size=400)
    assert fit_scores(x, fresh, [tiny]) == [-1.0] and fresh._distances is None  # nothing to score: no distances


def plain_sq_distances(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.maximum((x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :], 0.0)


def test_distances_in_place_and_in_blocks_are_the_plain_formula() -> None:
    """In place, with the rows' norms kept, and in blocks: the same arithmetic, so the same bits (the models and
    `evaluate`'s figures depend on them), also where the last block is short."""
    x, _ = blobs(3, PAIRWISE_BLOCK + 45, 5, 8)
    centers = x[:4] + 0.5
    assert np.array_equal(sq_distances(x, centers), plain_sq_distances(x, centers))
    assert np.array_equal(pairwise_distances(x), np.sqrt(plain_sq_distances(x, x)))


def test_silhouettes_of_several_labellings_in_one_product_match_each_alone() -> None:
    x, truth = blobs(3, 300, 4, 9)
    d = pairwise_distances(x)
    labellings = [truth, np.zeros(len(x), dtype=int), (truth + 1) % 3 * 2, np.arange(len(x)) % 5]
    together = silhouettes_of(d, labellings)
    assert together == [silhouettes_of(d, [labels])[0] for labels in labellings]
    assert together[1] == -1.0 and together[0] == together[2] > 0.7 > together[3]


def snapshot(centroids: np.ndarray) -> ModelSnapshot:
    space = FeatureSpace(("a",), (DAY, 7 * DAY))
    dim = space.dim
    c = np.zeros((len(centroids), dim))
    c[:, : centroids.shape[1]] = centroids
    return ModelSnapshot(3, space, np.zeros(dim), np.ones(dim), c, ("p1", "p2"), ("one", "two"), 10, 3, {2: 0.5})


def test_snapshot_assign_margin_and_round_trip() -> None:
    snap = snapshot(np.array([[0.0, 0.0], [4.0, 0.0]]))
    x = np.zeros((3, snap.space.dim))
    x[1, 0] = 4.0
    x[2, 0] = 2.0
    a = snap.assign(x)
    assert a.index.tolist() == [0, 1, 0]  # a row halfway between two centroids goes to the first
    assert a.margin[0] == pytest.approx(1.0) and a.margin[2] == pytest.approx(0.0)
    back = ModelSnapshot.from_bytes(snap.to_bytes())
    assert back.persona_ids == snap.persona_ids and np.allclose(back.centroids, snap.centroids)
    assert back.version == 3 and back.k_scores == {2: 0.5}


def test_drift_is_the_mean_centroid_move_of_the_personas_both_snapshots_have() -> None:
    old = snapshot(np.array([[0.0, 0.0], [4.0, 0.0]]))
    moved = dataclasses.replace(old, version=4, centroids=old.centroids + np.eye(1, old.space.dim) * 3.0)
    assert moved.drift_from(old) == pytest.approx(3.0)
    assert old.drift_from(old) == 0.0
    # compared in the newer snapshot's scaled units: the same raw centroids under a doubled scale are half as far
    rescaled = dataclasses.replace(
        moved, scale=moved.scale * 2, centroids=(old.centroids + np.eye(1, old.space.dim) * 3.0) / 2
    )
    assert rescaled.drift_from(old) == pytest.approx(1.5)
    renamed = dataclasses.replace(moved, persona_ids=("p1", "p9"), persona_names=("one", "nine"))
    assert renamed.drift_from(old) == pytest.approx(3.0)  # p1 only
    other = dataclasses.replace(moved, persona_ids=("p7", "p9"))
    assert other.drift_from(old) is None
    space = FeatureSpace(("a", "b"), (DAY, 7 * DAY))
    d = space.dim
    wider = ModelSnapshot(5, space, np.zeros(d), np.ones(d), np.zeros((2, d)), ("p1", "p2"), ("one", "two"), 10, 3)
    assert wider.drift_from(old) is None  # another vocabulary: nothing to compare


def population(n: int, t_end: int, seed: int = 0) -> list[tuple[str, UserState, int]]:
    """Two behaviours: 'reader' users view, 'buyer' users purchase; ten days of events per user, users sampled
    at times spread over ten days."""
    rng = np.random.default_rng(seed)
    hl = (DAY, 7 * DAY)
    out = []
    for u in range(n):
        s = UserState(2)
        etype = "view" if u % 2 else "purchase"
        end = t_end - (u % 11) * DAY
        for t in sorted(rng.integers(end - 10 * DAY, end, size=20).tolist()):
            apply_event(
                s, UserEvent(f"u{u}", etype, t, 5.0 if etype == "purchase" else None, None, None), hl, 8, 1_800_000
            )
        out.append((f"u{u}", s, end))
    return out


def test_trainer_waits_for_warmup_then_publishes_and_resumes() -> None:
    s = Settings(warmup_samples=100, k_max=4, publish_every=50)
    t_end = 1_767_225_600_000 + 20 * DAY
    samples = population(200, t_end)
    tr = Trainer(s)
    assert tr.add(samples[:99]) is None
    first = tr.add(samples[99:100])
    assert first is not None and first.version == 1 and len(first.persona_ids) == 2
    later = tr.add(samples[100:150])
    assert later is not None and later.version == 2 and later.persona_ids == first.persona_ids
    resumed = Trainer(s, later)
    nxt = resumed.add(samples[150:200])
    assert nxt is not None and nxt.version == 3 and nxt.persona_ids == later.persona_ids
    assert nxt.samples_seen == later.samples_seen + 50
    # the samples-topic offset a resumed trainer skips to travels with the snapshot; older snapshots read as 0
    marked = dataclasses.replace(nxt, samples_offset=17)
    assert ModelSnapshot.from_bytes(marked.to_bytes()).samples_offset == 17
    legacy = codec.loads(nxt.to_bytes())
    del legacy["samples_offset"]
    assert ModelSnapshot.from_bytes(codec.dumps(legacy)).samples_offset == 0


def test_trainer_warmup_needs_event_time_span() -> None:
    s = Settings(warmup_samples=100, k_max=4)
    tr = Trainer(s)
    same_time = [(u, st, 1_767_225_600_000) for u, st, _ in population(150, 1_767_225_600_000 + 20 * DAY)]
    assert tr.add(same_time) is None  # all sampled at one instant: features not mature yet


def test_a_small_stream_is_fitted_once_its_samples_span_four_slowest_half_lives() -> None:
    s = Settings(warmup_samples=1500, k_max=4)  # far more users than this stream has
    early = population(60, 1_767_225_600_000 + 20 * DAY)
    # one more user, sampled 4 x 7 days after the first samples
    late = [("late", st, t) for _, st, t in population(1, 1_767_225_600_000 + 40 * DAY, seed=1)]
    tr = Trainer(s)
    assert tr.add(early) is None
    first = tr.add(late)
    assert first is not None and first.version == 1 and first.samples_seen == 61
    # the stream's typical gap between a user's events travels with the snapshot (an older one reads as unknown)
    assert first.typical_gap_ms == pytest.approx(
        float(np.median([(st.last_ts - st.first_ts) / 19 for _, st, _ in early + late]))
    )
    assert ModelSnapshot.from_bytes(first.to_bytes()).typical_gap_ms == first.typical_gap_ms
    legacy = codec.loads(first.to_bytes())
    del legacy["typical_gap_ms"]
    assert ModelSnapshot.from_bytes(codec.dumps(legacy)).typical_gap_ms == 0.0
    assert Trainer(s).add(population(38, 1_767_225_600_000 + 20 * DAY) + late) is None  # 39 users: under 10 x K_MAX


def _fill_window(tr: Trainer, centres: np.ndarray, seed: int) -> None:
    """The trainer's window of recent samples: rows around ``centres`` (model units)."""
    rng = np.random.default_rng(seed)
    for i in range(len(tr.window)):
        tr.window[i] = centres[i % len(centres)] + rng.normal(0.0, 0.05, centres.shape[1])
    tr._window_len = len(tr.window)


def test_a_persona_count_change_is_adopted_only_when_two_rechecks_in_a_row_call_for_it() -> None:
    s = Settings(warmup_samples=100, k_max=4, publish_every=10**6, recheck_every=10**6)
    t_end = 1_767_225_600_000 + 20 * DAY
    tr = Trainer(s)
    first = tr.add(population(100, t_end))
    assert first is not None and len(first.persona_ids) == 2
    two = tr.model.centroids() if tr.model is not None else first.centroids
    three = np.vstack([two, two[0] + 4.0 * (two[1] - two[0])])  # a third behaviour, far from both
    _fill_window(tr, three, 1)
    assert tr._recheck() is None  # one window calling for it is not enough
    _fill_window(tr, two, 2)
    assert tr._recheck() is None  # the next did not: the proposal lapses
    _fill_window(tr, three, 3)
    assert tr._recheck() is None
    _fill_window(tr, three, 4)
    adopted = tr._recheck()
    assert adopted is not None and adopted.version == 2
    assert adopted.persona_ids == (*first.persona_ids, "p3")


def test_a_persona_no_recent_user_is_nearest_to_retires_at_the_next_update() -> None:
    """An online update can leave a centroid where nobody is: once the window has enough samples to tell, the
    next version drops it and announces it retired (not a live persona with no users)."""
    s = Settings(warmup_samples=100, k_max=4, publish_every=50)
    samples = population(300, 1_767_225_600_000 + 20 * DAY)
    first = Trainer(s).add(samples[:100])
    assert first is not None and len(first.persona_ids) == 2
    far = first.centroids.max(0) + 50.0
    ghost = dataclasses.replace(
        first,
        centroids=np.vstack([first.centroids, far]),
        persona_ids=(*first.persona_ids, "p9"),
        persona_names=(*first.persona_names, "nobody"),
        next_persona=10,
    )
    tr = Trainer(s, ghost)
    early = tr.add(samples[100:150])  # 50 samples in the window: too few to tell (20 per centroid)
    assert early is not None and "p9" in early.persona_ids
    later = tr.add(samples[150:200])
    assert later is not None and later.persona_ids == first.persona_ids
    assert [(e["kind"], [p["id"] for p in e["from"]], e["flows"]) for e in later.changes] == [("retired", ["p9"], [])]
    after = tr.add(samples[200:250])  # the online model went on without it
    assert after is not None and after.persona_ids == first.persona_ids and after.changes == ()
