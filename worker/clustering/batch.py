"""Small, deterministic batch k-means (k-means++ + Lloyd) and silhouette, used to warm-start the online model
and to choose the number of personas from the data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def sq_distances(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances, shape (len(x), len(centers))."""
    d: np.ndarray = (x * x).sum(1)[:, None] - 2.0 * x @ centers.T + (centers * centers).sum(1)[None, :]
    np.maximum(d, 0.0, out=d)
    return d


@dataclass(frozen=True)
class Fit:
    centers: np.ndarray
    labels: np.ndarray
    inertia: float


def lloyd(x: np.ndarray, centers: np.ndarray, iters: int = 60) -> Fit:
    """Lloyd iterations from the given centres (an empty cluster keeps its centre)."""
    k = len(centers)
    labels = np.zeros(len(x), dtype=np.int64)
    for _ in range(iters):
        labels = sq_distances(x, centers).argmin(1)
        new = np.array([x[labels == j].mean(0) if np.any(labels == j) else centers[j] for j in range(k)])
        if np.allclose(new, centers, atol=1e-7):
            break
        centers = new
    d = sq_distances(x, centers)
    return Fit(centers, d.argmin(1), float(d.min(1).sum()))


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, n_init: int = 10, iters: int = 60) -> Fit:
    """The best of ``n_init`` k-means++ starts: with fewer, a first fit sometimes lands two personas in one
    local optimum and scores the right persona count below a smaller one (4 starts: 3 of 8 sample draws of the
    weekly world chose 4 personas of 5; 10 starts: none)."""
    best: Fit | None = None
    for _ in range(n_init):
        fit = lloyd(x, _kmeans_pp(x, k, rng), iters)
        if best is None or fit.inertia < best.inertia:
            best = fit
    assert best is not None
    return best


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centers: np.ndarray = x[rng.integers(len(x))][None, :]
    for _ in range(1, k):
        centers = add_center(x, centers, rng)
    return centers


def add_center(x: np.ndarray, centers: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``centers`` plus one row of ``x`` drawn with probability proportional to its squared distance from them
    (the k-means++ step)."""
    closest = sq_distances(x, centers).min(1)
    total = closest.sum()
    idx = rng.integers(len(x)) if total <= 0 else rng.choice(len(x), p=closest / total)
    return np.vstack([centers, x[idx]])


class ScoringSample:
    """Rows to score fits on by silhouette, with their pairwise distances: computed once for every fit scored on
    the same rows (the quadratic part; a re-check scores up to ``k + 4`` fits)."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows
        self._distances: np.ndarray | None = None

    @property
    def distances(self) -> np.ndarray:
        if self._distances is None:
            d = sq_distances(self.rows, self.rows)
            np.sqrt(d, out=d)
            self._distances = d
        return self._distances


def fit_score(x: np.ndarray, sub: ScoringSample, fit: Fit, min_share: float = 0.01) -> float:
    """Silhouette of ``fit`` on the subsample ``sub``; -1 when a cluster holds under ``min_share`` of ``x``."""
    sizes = np.bincount(fit.labels, minlength=len(fit.centers))
    if sizes.min() < max(2, min_share * len(x)):
        return -1.0
    return round(silhouette_of(sub.distances, sq_distances(sub.rows, fit.centers).argmin(1)), 4)


def subsample(x: np.ndarray, rng: np.random.Generator, size: int = 2500) -> ScoringSample:
    """Silhouette is quadratic: at most ``size`` rows of ``x``."""
    return ScoringSample(x if len(x) <= size else x[rng.choice(len(x), size, replace=False)])


def silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette coefficient (exact; keep ``x`` to a few thousand rows)."""
    return silhouette_of(ScoringSample(x).distances, labels)


def silhouette_of(d: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette coefficient from the rows' pairwise distances ``d``."""
    ks = np.unique(labels)
    if len(ks) < 2:
        return -1.0
    n = len(labels)
    own = np.searchsorted(ks, labels)
    onehot = np.zeros((n, len(ks)))
    onehot[np.arange(n), own] = 1.0
    per_cluster = d @ onehot  # each row's distance sum to each cluster, in one BLAS call
    sizes = onehot.sum(0)
    own_size = sizes[own]
    a = per_cluster[np.arange(n), own] / np.maximum(own_size - 1, 1)
    mean_other = per_cluster / sizes[None, :]
    mean_other[np.arange(n), own] = np.inf
    b = mean_other.min(1)
    s = np.where(own_size > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(s.mean())


@dataclass(frozen=True)
class KChoice:
    k: int
    fit: Fit
    scores: dict[int, float]


def choose_k(x: np.ndarray, k_min: int, k_max: int, seed: int, tolerance: float = 0.01) -> KChoice:
    """Fit every k in [k_min, k_max] and keep the best silhouette; within ``tolerance`` of the best, the smallest
    k wins (over-segmenting is a defect). A cluster of under 1 % of the sample disqualifies a k."""
    rng = np.random.default_rng(seed)
    k_max = max(k_min, min(k_max, len(x) - 1))
    sub = subsample(x, rng)
    fits: dict[int, Fit] = {}
    scores: dict[int, float] = {}
    for k in range(max(2, k_min), k_max + 1):
        fits[k] = kmeans(x, k, rng)
        scores[k] = fit_score(x, sub, fits[k])
    if not scores:  # k_min == k_max == 1
        fit = kmeans(x, 1, rng)
        return KChoice(1, fit, {1: 0.0})
    best = max(scores.values())
    k = min(k for k, s in scores.items() if s >= best - tolerance)
    return KChoice(k, fits[k], scores)
