"""The online part of the model: what learns from each training sample between snapshots.

Every kind is warm-started (where the algorithm allows it) from the batch fit that chose the persona count, learns
from batches of scaled sample rows, and hands back centroids in the same scaled space for the next snapshot.

- ``minibatch``: mini-batch k-means in numpy (Sculley 2010) with a per-centroid step of ``1 / min(n, memory)``:
  it converges like a batch fit, then keeps following a slow drift with a memory of ``model_memory`` samples.
- ``kmeans``: River's ``KMeans`` (step ``model_halflife`` towards every sample).
- ``streamkmeans``, ``clustream``, ``dbstream``, ``denstream``: River's other clusterers. They build their own
  clusters (no warm start); until they have some, the last snapshot's centroids stand. DBSTREAM and DenStream
  choose the number of clusters themselves.

``docs/model-choice.md`` has the measured comparison behind the default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from river import cluster

from worker.clustering.batch import sq_distances
from worker.errors import ConfigError
from worker.settings import Settings

KINDS = ("minibatch", "kmeans", "streamkmeans", "clustream", "dbstream", "denstream")


class OnlineModel(Protocol):
    keeps_order: bool  # centroid i stays the same cluster between calls (else persona ids are re-matched)

    def learn(self, xs: np.ndarray) -> None: ...

    def centroids(self) -> np.ndarray: ...


class MiniBatchKMeans:
    keeps_order = True

    def __init__(self, centroids: np.ndarray, counts: np.ndarray, memory: int) -> None:
        self.c = centroids.astype(np.float64).copy()
        self.n = counts.astype(np.float64).copy()
        self.memory = float(memory)

    def learn(self, xs: np.ndarray) -> None:
        if not len(xs):
            return
        labels = sq_distances(xs, self.c).argmin(1)
        for j in np.unique(labels).tolist():
            pts = xs[labels == j]
            self.n[j] += len(pts)
            step = len(pts) / min(self.n[j], self.memory)
            self.c[j] += min(1.0, step) * (pts.mean(0) - self.c[j])

    def centroids(self) -> np.ndarray:
        return self.c.copy()


class RiverModel:
    """Any River clusterer with ``learn_one`` and a ``centers`` mapping (cluster -> {feature: value})."""

    def __init__(self, model: Any, names: tuple[str, ...], fallback: np.ndarray, keeps_order: bool) -> None:
        self.model = model
        self.names = names
        self.fallback = fallback
        self.keeps_order = keeps_order

    def learn(self, xs: np.ndarray) -> None:
        names = self.names
        for row in xs.tolist():
            self.model.learn_one(dict(zip(names, row, strict=True)))

    def centroids(self) -> np.ndarray:
        centers = getattr(self.model, "centers", None) or {}
        rows = [[float(c.get(n, 0.0)) for n in self.names] for _, c in sorted(centers.items()) if c]
        if not rows:
            return self.fallback.copy()
        return np.array(rows, dtype=np.float64)


def _river_kmeans(s: Settings, centroids: np.ndarray, names: tuple[str, ...]) -> Any:
    model = cluster.KMeans(n_clusters=len(centroids), halflife=s.model_halflife, seed=s.model_seed)
    for i, c in enumerate(centroids):  # warm start: River's random initial centres replaced by the batch fit
        model.centers[i].clear()
        model.centers[i].update(zip(names, (float(v) for v in c), strict=True))
    return model


_RIVER: dict[str, tuple[Callable[[Settings, np.ndarray, tuple[str, ...]], Any], bool]] = {
    "kmeans": (_river_kmeans, True),
    "streamkmeans": (
        lambda s, c, _n: cluster.STREAMKMeans(chunk_size=1000, n_clusters=len(c), halflife=0.5, seed=s.model_seed),
        False,
    ),
    "clustream": (
        lambda s, c, _n: cluster.CluStream(n_macro_clusters=len(c), max_micro_clusters=100, seed=s.model_seed),
        False,
    ),
    "dbstream": (
        lambda s, c, _n: cluster.DBSTREAM(clustering_threshold=2.0, fading_factor=0.003, cleanup_interval=100),
        False,
    ),
    "denstream": (lambda s, c, _n: cluster.DenStream(n_samples_init=500), False),
}


def make_model(s: Settings, centroids: np.ndarray, counts: np.ndarray, names: tuple[str, ...]) -> OnlineModel:
    if s.model == "minibatch":
        return MiniBatchKMeans(centroids, counts, s.model_memory)
    try:
        factory, keeps_order = _RIVER[s.model]
    except KeyError:
        raise ConfigError(f"unknown model {s.model!r}; known: {', '.join(KINDS)}") from None
    return RiverModel(factory(s, centroids, names), names, centroids, keeps_order)
