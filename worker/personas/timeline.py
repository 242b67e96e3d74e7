"""Moves between segments over event time: the flows (from → to) and the sizes they add up to.

A :class:`Timeline` folds segment changes (from, to, event time, trigger) into buckets of event time. From them it
gives the flows between segments over a window (users who moved, and how many of them a model update moved) and
each segment's size at every bucket's end, counted back from the sizes now (so a view that starts late, or a topic
whose oldest changes were deleted, still ends at the true sizes). Memory is bounded: past ``max_buckets`` buckets
the width doubles and neighbours merge, so a log of any span (hours of a demo, years of a purchase log) fits.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

HOUR_MS = 3_600_000
NONE = "none"  # no segment: before a user's first change, after an erasure

Move = tuple[str, str, bool]  # from, to, made by a model update


@dataclass(frozen=True)
class Flow:
    source: str
    target: str
    users: int
    by_model: int  # of ``users``: moved by a model update (trigger model_update), not by their own behaviour


@dataclass(frozen=True)
class Sizes:
    """Each segment's size at the end of each of ``times`` (event time, ms, oldest first)."""

    times: tuple[int, ...]
    series: dict[str, tuple[int, ...]]


class Timeline:
    def __init__(self, width_ms: int = HOUR_MS, max_buckets: int = 2048) -> None:
        self.width_ms = width_ms
        self.max_buckets = max_buckets
        self._buckets: dict[int, Counter[Move]] = {}

    def add(self, before: str | None, after: str | None, at_ms: int, trigger: str) -> None:
        key = at_ms // self.width_ms
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Counter()
            if len(self._buckets) > self.max_buckets:
                self._coarsen()
                bucket = self._buckets[at_ms // self.width_ms]
        bucket[(before or NONE, after or NONE, trigger == "model_update")] += 1

    def add_all(self, moves: Iterable[tuple[str | None, str | None, int, str]]) -> None:
        for before, after, at_ms, trigger in moves:
            self.add(before, after, at_ms, trigger)

    def _coarsen(self) -> None:
        """Twice as wide buckets (neighbours merged) until they fit."""
        while len(self._buckets) > self.max_buckets:
            self.width_ms *= 2
            merged: dict[int, Counter[Move]] = {}
            for key, bucket in self._buckets.items():
                merged.setdefault(key // 2, Counter()).update(bucket)
            self._buckets = merged

    @property
    def span(self) -> tuple[int, int] | None:
        """Event time from the start of the oldest bucket to the end of the newest one."""
        if not self._buckets:
            return None
        return min(self._buckets) * self.width_ms, (max(self._buckets) + 1) * self.width_ms

    def flows(self, since_ms: int | None = None) -> list[Flow]:
        """Moves between segments in the buckets that end after ``since_ms`` (all when None), largest first; a
        user's first appearance (from no segment) is not a flow."""
        users: Counter[tuple[str, str]] = Counter()
        by_model: Counter[tuple[str, str]] = Counter()
        for key, bucket in self._buckets.items():
            if since_ms is not None and (key + 1) * self.width_ms <= since_ms:
                continue
            for (before, after, model_made), n in bucket.items():
                if before in (NONE, after):
                    continue
                users[(before, after)] += n
                if model_made:
                    by_model[(before, after)] += n
        return [Flow(a, b, n, by_model[(a, b)]) for (a, b), n in users.most_common()]

    def sizes(self, now: Mapping[str, int], points: int = 48) -> Sizes:
        """Sizes at up to ``points`` evenly spaced bucket ends, counted back from ``now`` (the sizes after the
        newest bucket): before a bucket, a segment held what it holds after it, less what moved in, plus what
        moved out."""
        if not self._buckets:
            return Sizes((), {})
        first, last = min(self._buckets), max(self._buckets)
        keys = range(first, last + 1)
        step = max(1, -(-len(keys) // points))
        wanted = set(keys[::-step])  # the newest bucket's end is always a point
        current: Counter[str] = Counter({k: v for k, v in now.items() if k != NONE})
        times: list[int] = []
        rows: list[Counter[str]] = []
        for key in reversed(keys):
            if key in wanted:
                times.append((key + 1) * self.width_ms)
                rows.append(current.copy())
            for (before, after, _), n in self._buckets.get(key, {}).items():
                current[after] -= n
                current[before] += n
        segments = sorted({s for row in rows for s in row if s != NONE})
        series = {s: tuple(max(0, row[s]) for row in reversed(rows)) for s in segments}
        return Sizes(tuple(reversed(times)), series)
