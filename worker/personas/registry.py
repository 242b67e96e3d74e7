"""Stable persona ids: match a new set of centroids to the previous one.

Clusterers renumber their clusters freely; users must not see that as a segment change. New centroids are matched
to old ones by minimum total distance (Hungarian assignment). A match farther than ``cap`` is not the same
persona: it gets a fresh id, and the old id retires.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

DORMANT = "dormant"  # reserved id: users silent for long enough to be taken as lapsed (worker.changes.dormancy)
LAPSING = "lapsing"  # reserved id: users silent for part of that, on their way to dormant
NEW = "new"  # reserved id: a user from the first event until the model places them (below `min_events`)
RESERVED = (NEW, LAPSING, DORMANT)  # segments that are not personas of a model: the same in every model
QUIET = (LAPSING, DORMANT)  # the segments silence moves a user to
# what a model update can do to a persona (persona-change.v1 `kind`; worker.personas.lifecycle)
PERSONA_EVENTS = ("emerged", "split", "merged", "retired", "drifted", "renamed")


SMALL_SHARE = 0.01  # a persona with fewer of the users placed in personas than this is small


def small_personas(persona_ids: Sequence[str], counts: Mapping[str, int]) -> int:
    """How many of the model's personas hold fewer than ``SMALL_SHARE`` of the users in a persona (``counts``:
    users per segment; the reserved segments do not count): a model that split the users too finely."""
    placed = sum(counts.get(pid, 0) for pid in persona_ids)
    return sum(1 for pid in persona_ids if counts.get(pid, 0) < SMALL_SHARE * placed) if placed else 0


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
    return _fresh_ids(ids, next_number)


def ids_by_members(
    old_ids: Sequence[str], old_labels: np.ndarray, new_labels: np.ndarray, k_new: int, next_number: int
) -> tuple[list[str], int]:
    """Ids for ``k_new`` clusters that re-divide the same users (labels before and after, per user), and the next
    free persona number: each old id goes to the new cluster that keeps most of its users (one assignment for all,
    most users kept in total); a cluster left without one gets a fresh id, an old id left without one retires."""
    kept = np.zeros((k_new, len(old_ids)))
    np.add.at(kept, (new_labels, old_labels), 1.0)
    rows, cols = linear_sum_assignment(kept, maximize=True)
    ids: list[str | None] = [None] * k_new
    for r, c in zip(rows, cols, strict=True):
        ids[r] = old_ids[c]
    return _fresh_ids(ids, next_number)


def _fresh_ids(ids: Sequence[str | None], next_number: int) -> tuple[list[str], int]:
    """``ids`` with a fresh id for each gap, and the next free persona number."""
    out: list[str] = []
    for pid in ids:
        if pid is None:
            pid = persona_id(next_number)
            next_number += 1
        out.append(pid)
    return out, next_number
