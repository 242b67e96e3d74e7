"""Small, deterministic batch k-means (k-means++ + Lloyd) and silhouette, used to warm-start the online model
and to choose the number of personas from the data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def sq_distances(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances, shape (len(x), len(centers))."""
    return Points(x).sq_to(centers)


class Points:
    """Rows with what every squared distance from them reuses, their squared norms and the rows doubled: a Lloyd
    run measures the same rows against new centres in every iteration (those two were half of each measure)."""

    __slots__ = ("doubled", "norms", "rows")

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows
        self.norms: np.ndarray = (rows * rows).sum(1)
        self.doubled: np.ndarray = 2.0 * rows

    def sq_to(self, centers: np.ndarray) -> np.ndarray:
        """Squared Euclidean distances to ``centers``, shape (len(rows), len(centers))."""
        out = np.empty((len(self.rows), len(centers)))
        return _sq_into(out, self.norms, self.doubled, centers.T, (centers * centers).sum(1))


def _sq_into(
    out: np.ndarray, norms: np.ndarray, doubled: np.ndarray, centers_t: np.ndarray, center_norms: np.ndarray
) -> np.ndarray:
    """``|x|² - 2x·c + |c|²``, in that order and in place in ``out``, clipped at 0 (rounding can take it below)."""
    np.matmul(doubled, centers_t, out=out)
    np.subtract(norms[:, None], out, out=out)
    np.add(out, center_norms[None, :], out=out)
    np.maximum(out, 0.0, out=out)
    return out


@dataclass(frozen=True)
class Fit:
    centers: np.ndarray
    labels: np.ndarray
    inertia: float


def lloyd(x: np.ndarray, centers: np.ndarray, iters: int = 60) -> Fit:
    """Lloyd iterations from the given centres (an empty cluster keeps its centre)."""
    k = len(centers)
    points = Points(x)
    labels = np.zeros(len(x), dtype=np.int64)
    for _ in range(iters):
        labels = points.sq_to(centers).argmin(1)
        new = np.array([x[labels == j].mean(0) if np.any(labels == j) else centers[j] for j in range(k)])
        if np.allclose(new, centers, atol=1e-7):
            break
        centers = new
    d = points.sq_to(centers)
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


PAIRWISE_BLOCK = 256  # rows of the pairwise distances computed at a time: a block's steps stay in the cache


def pairwise_distances(rows: np.ndarray) -> np.ndarray:
    """Euclidean distances between every two rows: :func:`sq_distances` of ``rows`` with themselves, then the
    root, a block of rows at a time and in place (one array instead of four temporaries the size of the result,
    each a pass through memory; the same arithmetic in the same order)."""
    n = len(rows)
    out = np.empty((n, n))
    points, rows_t = Points(rows), rows.T
    for i in range(0, n, PAIRWISE_BLOCK):
        part = slice(i, i + PAIRWISE_BLOCK)
        block = _sq_into(out[part], points.norms[part], points.doubled[part], rows_t, points.norms)
        np.sqrt(block, out=block)
    return out


class ScoringSample:
    """Rows to score fits on by silhouette, with their pairwise distances: computed once for every fit scored on
    the same rows (the quadratic part; a re-check scores up to ``k + 4`` fits)."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows
        self._distances: np.ndarray | None = None

    @property
    def distances(self) -> np.ndarray:
        if self._distances is None:
            self._distances = pairwise_distances(self.rows)
        return self._distances


def fit_scores(x: np.ndarray, sub: ScoringSample, fits: list[Fit], min_share: float = 0.01) -> list[float]:
    """Silhouette of each fit on the subsample ``sub``; -1 for a fit with a cluster holding under ``min_share``
    of ``x``. The fits' silhouettes come from one product with the sample's distances (:func:`silhouettes_of`)."""
    scored = [i for i, fit in enumerate(fits) if _large_enough(x, fit, min_share)]
    scores = [-1.0] * len(fits)
    if not scored:  # the quadratic distances only for a fit that is scored
        return scores
    values = silhouettes_of(sub.distances, [sq_distances(sub.rows, fits[i].centers).argmin(1) for i in scored])
    for i, value in zip(scored, values, strict=True):
        scores[i] = round(value, 4)
    return scores


def _large_enough(x: np.ndarray, fit: Fit, min_share: float) -> bool:
    sizes = np.bincount(fit.labels, minlength=len(fit.centers))
    return bool(sizes.min() >= max(2, min_share * len(x)))


def subsample(x: np.ndarray, rng: np.random.Generator, size: int = 2500) -> ScoringSample:
    """Silhouette is quadratic: at most ``size`` rows of ``x``."""
    return ScoringSample(x if len(x) <= size else x[rng.choice(len(x), size, replace=False)])


def silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette coefficient (exact; keep ``x`` to a few thousand rows)."""
    return silhouettes_of(ScoringSample(x).distances, [labels])[0]


def silhouettes_of(d: np.ndarray, labelings: list[np.ndarray]) -> list[float]:
    """Mean silhouette coefficient of each labelling of the rows whose pairwise distances are ``d`` (-1 for one
    with a single cluster). Every row's distance sum to every cluster of every labelling is one product of ``d``
    with their one-hot columns side by side: ``d`` is read once, not once a labelling (a re-check scores up to
    ``k + 4`` fits; on 2,500 rows, 63 ms in separate products against 17 ms in one)."""
    n = len(d)
    owns: list[tuple[np.ndarray, int]] = []  # each labelling's cluster of each row (0..k-1), and k
    for labels in labelings:
        ks = np.unique(labels)
        owns.append((np.searchsorted(ks, labels), len(ks)))
    onehot = np.zeros((n, sum(k for _, k in owns if k >= 2)))
    column = 0
    for own, k in owns:
        if k >= 2:
            onehot[np.arange(n), column + own] = 1.0
            column += k
    sums = d @ onehot
    values: list[float] = []
    column = 0
    for own, k in owns:
        if k < 2:
            values.append(-1.0)
            continue
        values.append(_mean_silhouette(sums[:, column : column + k], onehot[:, column : column + k].sum(0), own))
        column += k
    return values


def _mean_silhouette(per_cluster: np.ndarray, sizes: np.ndarray, own: np.ndarray) -> float:
    """From each row's distance sum to each cluster, the clusters' sizes and each row's own cluster."""
    n = len(own)
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
    for k in range(max(2, k_min), k_max + 1):
        fits[k] = kmeans(x, k, rng)
    scores = dict(zip(fits, fit_scores(x, sub, list(fits.values())), strict=True))
    if not scores:  # k_min == k_max == 1
        fit = kmeans(x, 1, rng)
        return KChoice(1, fit, {1: 0.0})
    best = max(scores.values())
    k = min(k for k, s in scores.items() if s >= best - tolerance)
    return KChoice(k, fits[k], scores)
