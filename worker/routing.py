"""Which partition owns a user: the Kafka default partitioner (murmur2 of the UTF-8 user id), the same function
the producer applies to table changelog records, so state and routing always agree."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from aiokafka.partitioner import murmur2


def partition_for(key: str, partitions: int) -> int:
    return int(murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def partitioner(partitions: int, cache: int = 1 << 16) -> Callable[[str], int]:
    """A cached ``user_id -> partition`` function for the hot path."""

    @lru_cache(maxsize=cache)
    def of(key: str) -> int:
        return partition_for(key, partitions)

    return of


def partition_keys(partitions: int, prefix: str) -> list[str]:
    """One key per partition that the partitioner maps to that partition (for per-partition metadata rows)."""
    keys: list[str | None] = [None] * partitions
    i = 0
    while None in keys:
        k = f"{prefix}{i}"
        p = partition_for(k, partitions)
        if keys[p] is None:
            keys[p] = k
        i += 1
    return [k for k in keys if k is not None]
