"""Silence timers without table scans: users bucketed by the event time of their next re-evaluation.

When a partition's watermark passes a bucket, only the users in the passed buckets are looked at (a min-heap of
bucket numbers finds them). Entries are never removed when a user is rescheduled (lazy deletion): the user's state
holds the one true due time, and a stale entry is skipped when its bucket fires.
"""

from __future__ import annotations

import heapq

BUCKET_MS = 3_600_000


class SilenceIndex:
    def __init__(self) -> None:
        self.buckets: dict[int, dict[int, set[str]]] = {}  # partition -> bucket -> users
        self.heaps: dict[int, list[int]] = {}  # partition -> bucket numbers present

    def schedule(self, partition: int, user_id: str, due_ms: int) -> None:
        bucket = due_ms // BUCKET_MS
        buckets = self.buckets.setdefault(partition, {})
        users = buckets.get(bucket)
        if users is None:
            users = buckets[bucket] = set()
            heapq.heappush(self.heaps.setdefault(partition, []), bucket)
        users.add(user_id)

    def pop_due(self, partition: int, watermark_ms: int) -> list[str]:
        """Users of the buckets that end at or before ``watermark_ms``, in a deterministic order."""
        heap = self.heaps.get(partition)
        if not heap:
            return []
        limit = watermark_ms // BUCKET_MS
        buckets = self.buckets[partition]
        out: list[str] = []
        while heap and heap[0] < limit:
            out.extend(sorted(buckets.pop(heapq.heappop(heap))))
        return out

    def clear(self) -> None:
        self.buckets.clear()
        self.heaps.clear()

    def __len__(self) -> int:
        return sum(len(u) for b in self.buckets.values() for u in b.values())
