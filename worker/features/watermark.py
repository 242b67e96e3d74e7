"""Per-partition event-time watermarks.

The watermark of a partition is the newest event time seen there minus the allowed lateness. It only moves
forward, so replaying an old log behaves exactly like live traffic: silence, recency and decay follow event time.
"""

from __future__ import annotations


class Watermarks:
    def __init__(self, lateness_ms: int) -> None:
        self.lateness_ms = lateness_ms
        self.max_ts: dict[int, int] = {}

    def observe(self, partition: int, ts: int) -> None:
        if ts > self.max_ts.get(partition, 0):
            self.max_ts[partition] = ts

    def get(self, partition: int) -> int:
        """Watermark of ``partition`` in epoch ms (0 before its first event)."""
        newest = self.max_ts.get(partition, 0)
        return max(0, newest - self.lateness_ms) if newest else 0

    def forget(self, partitions: set[int]) -> None:
        for p in partitions:
            self.max_ts.pop(p, None)
