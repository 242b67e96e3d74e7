from __future__ import annotations

import numpy as np
import pytest

from worker.clustering.online import KINDS, MiniBatchKMeans, make_model
from worker.settings import Settings


def _blobs(rng: np.random.Generator, n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    centers = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 0.0], [0.0, 6.0, 3.0]])
    labels = rng.integers(0, 3, size=n)
    return centers[labels] + rng.normal(0, 0.5, size=(n, 3)), centers


def test_minibatch_converges_from_a_rough_start_and_keeps_order() -> None:
    rng = np.random.default_rng(1)
    x, centers = _blobs(rng, 3000)
    model = MiniBatchKMeans(centers + 1.5, np.full(3, 10.0), memory=5000)
    for part in np.array_split(x, 30):
        model.learn(part)
    assert np.abs(model.centroids() - centers).max() < 0.15  # centroid i is still blob i


def test_minibatch_memory_bounds_how_fast_a_centroid_forgets() -> None:
    model = MiniBatchKMeans(np.zeros((1, 2)), np.array([1e9]), memory=100)
    model.learn(np.ones((10, 2)))
    assert model.centroids()[0] == pytest.approx([0.1, 0.1])  # 10 samples of a memory of 100


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_learns_and_returns_centroids_in_the_same_space(kind: str) -> None:
    rng = np.random.default_rng(2)
    x, centers = _blobs(rng, 2500)
    s = Settings(model=kind)  # type: ignore[arg-type]
    model = make_model(s, centers, np.full(3, 100.0), ("a", "b", "c"))
    for part in np.array_split(x, 25):
        model.learn(part)
    c = model.centroids()
    assert c.ndim == 2 and c.shape[1] == 3
    # every centroid lies where the data is, and every blob has a centroid near its centre
    assert np.sqrt(((c[:, None, :] - x[None, :, :]) ** 2).sum(-1)).min(1).max() < 2.0
    nearest = np.sqrt(((centers[:, None, :] - c[None, :, :]) ** 2).sum(-1)).min(1)
    assert nearest.max() < 2.0, (kind, nearest)  # a third of the distance between blobs (River's STREAMKMeans: 1.6)
    if model.keeps_order:  # centroid i is still blob i
        assert len(c) == 3 and np.abs(c - centers).max() < 1.0
