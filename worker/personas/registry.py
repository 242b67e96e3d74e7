"""Stable persona ids: match a new set of centroids to the previous one.

Clusterers renumber their clusters freely; users must not see that as a segment change. New centroids are matched
to old ones by minimum total distance (Hungarian assignment). A match farther than ``cap`` is not the same
persona: it gets a fresh id, and the old id retires.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

DORMANT = "dormant"  # reserved id: users silent for long enough to be taken as lapsed (worker.changes.dormancy)
LAPSING = "lapsing"  # reserved id: users silent for part of that, on their way to dormant
NEW = "new"  # reserved id: a user from the first event until the model places them (below `min_events`)
RESERVED = (NEW, LAPSING, DORMANT)  # segments that are not personas of a model: the same in every model
QUIET = (LAPSING, DORMANT)  # the segments silence moves a user to


def persona_id(number: int) -> str:
    return f"p{number}"


def match_ids(
    old_ids: Sequence[str],
    old_centroids: np.ndarray | None,
    new_centroids: np.ndarray,
    cap: float,
    next_number: int,
) -> tuple[list[str], int]:
    """Ids for ``new_centroids`` and the next free persona number."""
    ids: list[str | None] = [None] * len(new_centroids)
    if old_centroids is not None and len(old_ids) and len(new_centroids):
        cost = np.sqrt(((new_centroids[:, None, :] - old_centroids[None, :, :]) ** 2).sum(-1))
        rows, cols = linear_sum_assignment(cost)
        for r, c in zip(rows, cols, strict=True):
            if cost[r, c] <= cap:
                ids[r] = old_ids[c]
    out: list[str] = []
    for pid in ids:
        if pid is None:
            pid = persona_id(next_number)
            next_number += 1
        out.append(pid)
    return out, next_number
