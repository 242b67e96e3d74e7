"""The one place a group's model learns.

Workers send samples (user states with the event time they were evaluated at) to a single-partition topic, so
exactly one worker of the group runs the trainer. It warm-starts River's online ``KMeans`` from a batch fit on the
first samples (choosing the persona count by silhouette within bounds), then learns one sample at a time and
publishes a new snapshot every ``publish_every`` samples. Every ``recheck_every`` samples it re-chooses the
persona count on a window of recent samples and refits when another count is clearly better. Persona ids survive
refits through :func:`worker.personas.match_ids`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from river import cluster

from worker.clustering.batch import choose_k, silhouette, sq_distances
from worker.clustering.snapshot import ModelSnapshot
from worker.features.space import FeatureSpace, choose_vocabulary
from worker.features.state import UserState
from worker.personas import load_name_overrides, match_ids, name_personas
from worker.settings import Settings

log = logging.getLogger(__name__)

_RECHECK_GAIN = 0.02  # silhouette a different persona count must win by


class Trainer:
    def __init__(self, settings: Settings, current: ModelSnapshot | None = None) -> None:
        self.settings = settings
        self.overrides = load_name_overrides(settings.persona_names_file)
        self.warmup: dict[str, tuple[UserState, int]] = {}  # newest sample per user until the first fit
        self._warm_span = (2**63, 0)  # oldest and newest sample time seen in warm-up
        self.window = np.zeros((0, 0))
        self._window_len = 0
        self._window_pos = 0
        self.current: ModelSnapshot | None = None
        self.model: cluster.KMeans | None = None
        self.since_publish = 0
        self.since_recheck = 0
        self.seen = 0
        if current is not None:
            self.resume(current)

    # --- state ---------------------------------------------------------------------------------------
    def resume(self, snap: ModelSnapshot) -> None:
        """Continue from a persisted snapshot (after a restart or a move of the trainer to another worker)."""
        self.current = snap
        self.seen = snap.samples_seen
        self.model = self._river_model(snap.centroids, snap.space.names)
        size = 2 * self.settings.warmup_samples
        self.window = np.zeros((size, snap.space.dim))
        self._window_len = 0
        self._window_pos = 0

    def _river_model(self, centroids: np.ndarray, names: tuple[str, ...]) -> cluster.KMeans:
        model = cluster.KMeans(
            n_clusters=len(centroids), halflife=self.settings.model_halflife, seed=self.settings.model_seed
        )
        # warm start: River's random initial centres replaced by the batch fit
        for i, c in enumerate(centroids):
            model.centers[i].clear()
            model.centers[i].update(zip(names, (float(v) for v in c), strict=True))
        return model

    def _centroids(self) -> np.ndarray:
        assert self.model is not None and self.current is not None
        names = self.current.space.names
        return np.array([[self.model.centers[i][n] for n in names] for i in range(len(self.model.centers))])

    # --- learning ------------------------------------------------------------------------------------
    def add(self, samples: Iterable[tuple[str, UserState, int]]) -> ModelSnapshot | None:
        """Learn from ``(user_id, state, evaluated_at)`` samples; returns a new snapshot when one is due."""
        published: ModelSnapshot | None = None
        for uid, state, t in samples:
            if self.current is None:
                self.warmup[uid] = (state, t)
                self._warm_span = (min(self._warm_span[0], t), max(self._warm_span[1], t))
                if len(self.warmup) >= self.settings.warmup_samples and self._warm_enough():
                    published = self._fit_first()
                continue
            snap = self.current
            xs = (snap.space.matrix([state], [t])[0] - snap.mean) / snap.scale
            self._remember(xs)
            assert self.model is not None
            self.model.learn_one(dict(zip(snap.space.names, xs.tolist(), strict=True)))
            self.seen += 1
            self.since_publish += 1
            self.since_recheck += 1
            if self.since_recheck >= self.settings.recheck_every and self._window_len >= self.window.shape[0] // 2:
                published = self._recheck() or published
            if self.since_publish >= self.settings.publish_every:
                published = self._publish_update()
        return published

    def _remember(self, xs: np.ndarray) -> None:
        self.window[self._window_pos] = xs
        self._window_pos = (self._window_pos + 1) % len(self.window)
        self._window_len = min(self._window_len + 1, len(self.window))

    def _warm_enough(self) -> bool:
        """The first fit waits until the samples span the slowest half-life of event time, so the decayed rates
        it is fitted on have matured (a fit on the first hours of a stream sees only newcomers)."""
        return self._warm_span[1] - self._warm_span[0] >= max(self.settings.half_lives_ms)

    def _fit_first(self) -> ModelSnapshot:
        s = self.settings
        pairs = list(self.warmup.values())
        # users sampled long before the newest sample are stale views: evaluate everyone at their own time
        states = [st for st, _ in pairs]
        space = FeatureSpace(tuple(choose_vocabulary(states, s.vocabulary_size)), s.half_lives_ms)
        x = space.matrix(states, [t for _, t in pairs])
        mean = x.mean(0)
        scale = x.std(0)
        scale[scale < 1e-9] = 1.0
        xs = (x - mean) / scale
        choice = choose_k(xs, s.k_min, s.k_max, s.model_seed)
        ids, next_number = match_ids([], None, choice.fit.centers, s.new_persona_distance, 1)
        snap = self._snapshot(1, space, mean, scale, choice.fit.centers, ids, next_number, len(x), choice.scores)
        self.warmup = {}
        self.resume(snap)
        for row in xs:
            self._remember(row)
        log.info("first model: k=%d of silhouette scores %s, vocabulary %s", choice.k, choice.scores, space.vocabulary)
        return snap

    def _snapshot(
        self,
        version: int,
        space: FeatureSpace,
        mean: np.ndarray,
        scale: np.ndarray,
        centroids: np.ndarray,
        ids: list[str],
        next_number: int,
        samples: int,
        scores: dict[int, float],
    ) -> ModelSnapshot:
        # a persona keeps its name for as long as it keeps its id: names drifting with every update would
        # confuse every campaign built on them (overrides always apply)
        fresh = name_personas(centroids, space.names, ids, self.overrides, scale)
        known = dict(zip(self.current.persona_ids, self.current.persona_names, strict=True)) if self.current else {}
        names = [self.overrides.get(pid) or known.get(pid) or name for pid, name in zip(ids, fresh, strict=True)]
        return ModelSnapshot(
            version, space, mean, scale, centroids.copy(), tuple(ids), tuple(names), samples, next_number, scores
        )

    def _publish_update(self) -> ModelSnapshot:
        cur = self.current
        assert cur is not None
        self.since_publish = 0
        snap = self._snapshot(
            cur.version + 1,
            cur.space,
            cur.mean,
            cur.scale,
            self._centroids(),
            list(cur.persona_ids),
            cur.next_persona,
            self.seen,
            cur.k_scores,
        )
        self.current = snap
        return snap

    def _recheck(self) -> ModelSnapshot | None:
        """Re-choose the persona count on the recent window; refit only when another count is clearly better."""
        cur = self.current
        assert cur is not None
        self.since_recheck = 0
        s = self.settings
        xs = self.window[: self._window_len]
        centroids = self._centroids()
        labels = sq_distances(xs, centroids).argmin(1)
        sub = slice(0, min(len(xs), 2500))
        current_score = silhouette(xs[sub], labels[sub])
        choice = choose_k(xs, s.k_min, s.k_max, s.model_seed + cur.version)
        if choice.k == len(centroids) or choice.scores[choice.k] < current_score + _RECHECK_GAIN:
            return None
        ids, next_number = match_ids(
            cur.persona_ids, centroids, choice.fit.centers, s.new_persona_distance, cur.next_persona
        )
        log.info(
            "persona count %d -> %d (silhouette %.3f -> %.3f)",
            len(centroids),
            choice.k,
            current_score,
            choice.scores[choice.k],
        )
        snap = self._snapshot(
            cur.version + 1,
            cur.space,
            cur.mean,
            cur.scale,
            choice.fit.centers,
            ids,
            next_number,
            self.seen,
            choice.scores,
        )
        self.since_publish = 0
        self.current = snap
        self.model = self._river_model(snap.centroids, snap.space.names)
        return snap
