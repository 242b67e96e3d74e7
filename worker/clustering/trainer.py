"""The one place a group's model learns.

Workers send samples (user states with the event time they were evaluated at) to a single-partition topic, so
exactly one worker of the group runs the trainer. It fits the first model in batch on the first samples (choosing
the persona count by silhouette within bounds), warm-starts the online model (:mod:`worker.clustering.online`)
from it, learns from every later sample and publishes a new snapshot every ``publish_every`` samples. Every
``recheck_every`` samples it tries one persona more and one fewer on a window of recent samples and switches when
that is clearly better on two re-checks in a row. Persona ids survive updates through
:func:`worker.personas.match_ids` (centroids), and a re-check's through :func:`worker.personas.ids_by_members`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable

import numpy as np

from worker.clustering.batch import Fit, add_center, choose_k, fit_scores, lloyd, sq_distances, subsample
from worker.clustering.online import OnlineModel, make_model
from worker.clustering.snapshot import ModelSnapshot, ancestries, displacements
from worker.clustering.weights import RELIABILITY_PAIRS, telling_weights, within_user_reliability
from worker.features.space import FeatureSpace, choose_vocabulary
from worker.features.state import UserState, to_scale
from worker.features.timescale import Rhythm, learned_half_lives
from worker.personas import ids_by_members, load_name_overrides, match_ids, name_personas
from worker.personas.lifecycle import Window, first_lineage, persona_changes
from worker.settings import Settings

log = logging.getLogger(__name__)
# a stream too small to reach WARMUP_SAMPLES users is fitted once its samples span this many slowest half-lives
LONG_WARMUP_HALF_LIVES = 4
EMPTY_CHECK_SAMPLES = 20  # window samples per centroid before a centroid that holds none of them is retired


class Trainer:
    def __init__(self, settings: Settings, current: ModelSnapshot | None = None) -> None:
        self.settings = settings
        self.overrides = load_name_overrides(settings.persona_names_file)
        self.warmup: dict[str, tuple[UserState, int]] = {}  # newest sample per user until the first fit
        self.earlier: dict[str, tuple[UserState, int]] = {}  # and the one before it: how much a user varies
        self._warm_span = (2**63, 0)  # oldest and newest sample time seen in warm-up
        self.window = np.zeros((0, 0))
        self.origins = np.zeros(0, dtype=np.int64)  # when the profile of each window sample's user began
        self._window_len = 0
        self._window_pos = 0
        self.current: ModelSnapshot | None = None
        # the newest snapshot handed out (by `add`, or resumed from): one `add` can fit several versions and hands
        # out the last, so lifecycle events compare a version with this one, not with versions nobody saw
        self.handed_out: ModelSnapshot | None = current
        self.model: OnlineModel | None = None
        self.since_publish = 0
        self.since_recheck = 0
        self.proposed: frozenset[str] | None = None  # the persona ids a re-check would switch to, once confirmed
        self.seen = 0
        self.as_of_ms = 0  # the newest sample's event time
        self.rhythm = Rhythm()  # the sampled users' gaps between their events
        if current is not None:
            self.resume(current)

    # --- state ---------------------------------------------------------------------------------------
    def resume(self, snap: ModelSnapshot, counts: np.ndarray | None = None) -> None:
        """Continue from a snapshot: a persisted one (after a restart, or when the trainer moved to another
        worker; taken as mature) or a new fit, whose ``counts`` (samples per centroid) set how far the first
        samples may still move it."""
        self.current = snap
        self.seen = snap.samples_seen
        self.as_of_ms = max(self.as_of_ms, snap.as_of_ms)
        mature = np.full(len(snap.centroids), float(self.settings.model_memory))
        self.model = make_model(self.settings, snap.centroids, mature if counts is None else counts, snap.space.names)
        size = 2 * self.settings.warmup_samples
        if self.window.shape != (size, snap.space.dim):
            self.window = np.zeros((size, snap.space.dim))
            self.origins = np.zeros(size, dtype=np.int64)
            self._window_len = 0
            self._window_pos = 0

    def _centroids(self) -> np.ndarray:
        assert self.model is not None
        return self.model.centroids()

    # --- learning ------------------------------------------------------------------------------------
    def add(self, samples: Iterable[tuple[str, UserState, int]]) -> ModelSnapshot | None:
        """Learn from ``(user_id, state, evaluated_at)`` samples; returns a new snapshot when one is due (the newest
        when they make several versions: its lifecycle events compare it with the snapshot handed out before)."""
        published: ModelSnapshot | None = None
        rows: list[bytes] = []  # FeatureSpace.packed_row
        origins: list[int] = []
        provisional = self.settings.half_lives_ms
        for uid, state, t in samples:
            self.rhythm.add(state, t)
            self.as_of_ms = max(self.as_of_ms, t)
            if self.current is None:
                if uid in self.warmup:
                    self.earlier[uid] = self.warmup[uid]
                self.warmup[uid] = (state, t)
                self._warm_span = (min(self._warm_span[0], t), max(self._warm_span[1], t))
                if self._warm_enough():
                    published = self._fit_first()
                continue
            space = self.current.space
            to_scale(state, provisional, space.half_lives_ms)  # sent by a worker that had no model yet
            rows.append(space.packed_row(state, t))
            origins.append(state.origin or state.first_ts)
        if rows:
            published = self._learn(rows, origins) or published
        if published is not None:
            self.handed_out = published
        return published

    def _learn(self, rows: list[bytes], origins: list[int]) -> ModelSnapshot | None:
        s = self.settings
        snap = self.current
        assert snap is not None and self.model is not None
        x = snap.space.model_units(rows)
        xs = (x - snap.mean) / snap.scale
        published = None
        i = 0
        while i < len(xs):
            # in steps that end where a publication or a re-check is due
            m = max(1, min(len(xs) - i, s.publish_every - self.since_publish, s.recheck_every - self.since_recheck))
            part = xs[i : i + m]
            for row, origin in zip(part, origins[i : i + m], strict=True):
                self._remember(row, origin)
            i += m
            self.model.learn(part)
            self.seen += m
            self.since_publish += m
            self.since_recheck += m
            if self.since_recheck >= s.recheck_every and self._window_len >= self.window.shape[0] // 2:
                published = self._recheck() or published
            if self.since_publish >= s.publish_every:
                published = self._publish_update()
        return published

    def _remember(self, xs: np.ndarray, origin: int) -> None:
        self.window[self._window_pos] = xs
        self.origins[self._window_pos] = origin
        self._window_pos = (self._window_pos + 1) % len(self.window)
        self._window_len = min(self._window_len + 1, len(self.window))

    def _warm_enough(self) -> bool:
        """The first fit waits for ``warmup_samples`` users whose samples span the slowest half-life of event
        time, so the decayed rates it is fitted on have matured (a fit on the first hours of a stream sees only
        newcomers); a smaller stream (a shop with a few thousand customers) is fitted with what it has, at least
        ten users per persona the model may find, once its samples span ``LONG_WARMUP_HALF_LIVES`` of them."""
        s = self.settings
        users, span = len(self.warmup), self._warm_span[1] - self._warm_span[0]
        slowest = max(s.half_lives_ms)
        if users >= s.warmup_samples:
            return span >= slowest
        return users >= 10 * s.k_max and span >= LONG_WARMUP_HALF_LIVES * slowest

    def _fit_first(self) -> ModelSnapshot:
        s = self.settings
        pairs = list(self.warmup.values())
        # users sampled long before the newest sample are stale views: evaluate everyone at their own time
        states = [st for st, _ in pairs]
        half_lives = self.half_lives()
        for st in states:
            to_scale(st, s.half_lives_ms, half_lives)
        space = FeatureSpace(tuple(choose_vocabulary(states, s.vocabulary_size)), half_lives)
        x = space.matrix(states, [t for _, t in pairs])
        mean = x.mean(0)
        scale = self._weighed_scale(space, x, np.maximum(x.std(0), space.scale_floor()))
        xs = (x - mean) / scale
        choice = choose_k(xs, s.k_min, s.k_max, s.model_seed)
        ids, next_number = match_ids([], None, choice.fit.centers, s.new_persona_distance, 1)
        snap = self._snapshot(1, space, mean, scale, choice.fit.centers, ids, next_number, len(x), choice.scores)
        self.warmup, self.earlier = {}, {}
        self.resume(snap, np.bincount(choice.fit.labels, minlength=choice.k).astype(np.float64))
        for row, st in zip(xs, states, strict=True):
            self._remember(row, st.origin or st.first_ts)
        log.info(
            "first model: k=%d of silhouette scores %s, vocabulary %s, half-lives %s days, typical gap %.3g days",
            choice.k,
            choice.scores,
            space.vocabulary,
            [round(h / 86_400_000, 4) for h in half_lives],
            snap.typical_gap_ms / 86_400_000,
        )
        return snap

    def _weighed_scale(self, space: FeatureSpace, x: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """``scale`` divided by the square root of each feature's weight (worker.clustering.weights): how clumped
        its values are across users, times how much of its spread is between users rather than a user's own
        swings from one sample to the next (measured on the users sampled twice in warm-up)."""
        s = self.settings
        centred = (x - x.mean(0)) / scale
        both = [uid for uid in self.warmup if uid in self.earlier]
        reliability = None
        if len(both) >= RELIABILITY_PAIRS:
            for uid in both:
                to_scale(self.earlier[uid][0], s.half_lives_ms, space.half_lives_ms)
            now = space.matrix([self.warmup[u][0] for u in both], [self.warmup[u][1] for u in both])
            before = space.matrix([self.earlier[u][0] for u in both], [self.earlier[u][1] for u in both])
            reliability = within_user_reliability((now - before) / scale, centred)
        weights = telling_weights(centred, np.random.default_rng(s.model_seed), reliability)
        out: np.ndarray = scale / np.sqrt(weights)
        return out

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
        known = dict(zip(self.current.persona_ids, self.current.persona_names, strict=True)) if self.current else {}
        names = name_personas(centroids, space.names, ids, self.overrides, scale, kept=known)
        snap = ModelSnapshot(
            version,
            space,
            mean,
            scale,
            centroids.copy(),
            tuple(ids),
            tuple(names),
            samples,
            next_number,
            scores,
            typical_gap_ms=self.typical_gap_ms(),
            as_of_ms=self.as_of_ms,
        )
        if self.handed_out is None:
            return dataclasses.replace(snap, lineage=first_lineage(snap))
        window = Window(self.window[: self._window_len], self.origins[: self._window_len])
        changes, lineage = persona_changes(self.handed_out, snap, window, self.settings.persona_drift_distance)
        for event in changes:
            log.info(
                "model v%d: persona %s %s", snap.version, event["kind"], [p["id"] for p in event["to"] or event["from"]]
            )
        displaced = displacements(self.handed_out.displaced, snap.version, changes)
        ancestry = ancestries(self.handed_out.ancestry, changes, snap.persona_ids)
        return dataclasses.replace(snap, lineage=lineage, changes=changes, displaced=displaced, ancestry=ancestry)

    def half_lives(self) -> tuple[float, ...]:
        """The operator's half-lives, or those the stream's rhythm calls for (worker.features.timescale)."""
        s = self.settings
        if not s.learn_half_lives:
            return s.half_lives_ms
        return learned_half_lives(s.half_lives_ms, self.rhythm.pooled_gap_ms())

    def typical_gap_ms(self) -> float:
        """The median of the sampled users' mean gaps between events (the last model's when none was sampled
        since the trainer started)."""
        gap = self.rhythm.median_gap_ms()
        if gap:
            return gap
        return self.current.typical_gap_ms if self.current is not None else 0.0

    def _publish_update(self) -> ModelSnapshot:
        cur = self.current
        assert cur is not None and self.model is not None
        self.since_publish = 0
        centroids = self._centroids()
        if self.model.keeps_order and len(centroids) == len(cur.centroids):
            ids, next_number = list(cur.persona_ids), cur.next_persona
        else:  # a clusterer that rebuilds its clusters: match them to the personas they continue
            ids, next_number = match_ids(
                cur.persona_ids, cur.centroids, centroids, self.settings.new_persona_distance, cur.next_persona
            )
        keep = self._holding(centroids)
        if keep is not None:  # a persona nobody in the window is nearest to retires (and is announced so)
            log.info("model v%d: %s hold no recent user", cur.version + 1, sorted(set(ids) - {ids[j] for j in keep}))
            centroids, ids = centroids[keep], [ids[j] for j in keep]
        snap = self._snapshot(
            cur.version + 1, cur.space, cur.mean, cur.scale, centroids, ids, next_number, self.seen, cur.k_scores
        )
        self.current = snap
        if keep is not None:
            self.resume(snap)  # the online model goes on without the empty centroids
        return snap

    def _holding(self, centroids: np.ndarray) -> list[int] | None:
        """The centroids some user of the recent window is nearest to, when others are not (None when every one
        holds someone, the window is too short to tell, or dropping the empty ones would leave fewer than
        ``k_min``). An online update can leave a centroid where nobody is any more: it is retired rather than
        listed as a live persona with no users."""
        k, n = len(centroids), self._window_len
        if n < EMPTY_CHECK_SAMPLES * k:
            return None
        held = np.bincount(sq_distances(self.window[:n], centroids).argmin(1), minlength=k)
        keep = [j for j in range(k) if held[j]]
        return keep if max(1, self.settings.k_min) <= len(keep) < k else None

    def _recheck(self) -> ModelSnapshot | None:
        """Try one persona more and one fewer on the recent window, each refined from the current centroids;
        switch when that is clearly better (``RECHECK_GAIN``) and still better on the next re-check (half the
        gain: one window of samples can catch a weekly rhythm at one phase). The personas that stay keep their ids
        by the users they keep (:func:`worker.personas.ids_by_members`), so a split gives the new id to the part
        that moved, not to the larger part."""
        cur = self.current
        assert cur is not None
        self.since_recheck = 0
        s = self.settings
        rng = np.random.default_rng(s.model_seed + cur.version)
        xs = self.window[: self._window_len]
        sub = subsample(xs, rng)
        now = lloyd(xs, self._centroids(), iters=0)
        k = len(now.centers)
        candidates: list[Fit] = []
        if k < s.k_max:
            candidates += [lloyd(xs, add_center(xs, now.centers, rng)) for _ in range(3)]
        if k > max(1, s.k_min):
            candidates += [lloyd(xs, np.delete(now.centers, j, axis=0)) for j in range(k)]
        if not candidates:
            return None
        current_score, *scores = fit_scores(xs, sub, [now, *candidates])
        best = int(np.argmax(scores))
        fit = candidates[best]
        ids, next_number = ids_by_members(cur.persona_ids, now.labels, fit.labels, len(fit.centers), cur.next_persona)
        confirming = self.proposed == frozenset(ids)
        self.proposed = None
        if scores[best] < current_score + s.recheck_gain * (0.5 if confirming else 1.0):
            return None
        if not confirming:
            self.proposed = frozenset(ids)
            return None
        log.info("persona count %d -> %d (silhouette %.3f -> %.3f)", k, len(fit.centers), current_score, scores[best])
        snap = self._snapshot(
            cur.version + 1,
            cur.space,
            cur.mean,
            cur.scale,
            fit.centers,
            ids,
            next_number,
            self.seen,
            {**cur.k_scores, len(fit.centers): scores[best]},
        )
        self.since_publish = 0
        self.resume(snap, np.bincount(fit.labels, minlength=len(fit.centers)).astype(np.float64))
        return snap
