"""Fakes shared by the tests (injected, never patched in), and a small model to test with."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from worker.clustering.snapshot import ModelSnapshot
from worker.features.space import FeatureSpace
from worker.producing import Record
from worker.runtime.ownership import Ownership


class FakeProducer:
    """Records sends in order; each send's delivery completes when the test releases it (or at once), with the
    record's position among the delivered ones (as a broker answers with its offset)."""

    def __init__(self, auto: bool = True) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.delivered: list[tuple[str, bytes]] = []
        self.waiting: list[tuple[asyncio.Future[int], tuple[str, bytes]]] = []
        self.auto = auto
        self.fail_on: bytes | None = None

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: int | None, headers: Any) -> Any:
        self.sent.append((topic, value))
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self.fail_on is not None and value == self.fail_on:
            fut.set_exception(OSError("broker went away"))
        elif self.auto:
            fut.set_result(len(self.delivered))
            self.delivered.append((topic, value))
        else:
            self.waiting.append((fut, (topic, value)))
        return fut

    async def send_all(self, records: list[Record]) -> list[Any]:
        """Every record sent, then each delivery awaited (the outbox's interface, as the worker's BatchSender)."""
        futures = [await self.send(*r) for r in records]
        return list(await asyncio.gather(*futures))

    def release(self) -> None:
        for fut, rec in self.waiting:
            fut.set_result(len(self.delivered))
            self.delivered.append(rec)
        self.waiting.clear()


class FakeChangelog:
    local = None

    def __init__(self) -> None:
        self.reads: list[tuple[str, list[int], int | None]] = []

    async def read(self, table: Any, partitions: set[int], tail: int | None = None) -> tuple[int, int]:
        self.reads.append((table.name, sorted(partitions), tail))
        return 0, 0


class FakeTopics:
    ok = True

    def __init__(self) -> None:
        self.flagged: list[str] = []

    def flag(self, problem: str) -> None:
        self.flagged.append(problem)


class Assigned(Ownership):
    """Ownership with the assignment given by the test (Faust's assignor is not started here)."""

    partitions: set[int] = set()

    def assigned(self) -> set[int]:
        return set(self.partitions)


MODEL_SPACE = FeatureSpace(("a", "b"), (86_400_000.0,))  # two event types, one half-life of a day


def model_of(
    version: int, centroids: list[list[float]], ids: list[str], names: list[str] | None = None, as_of_ms: int = 0
) -> ModelSnapshot:
    """A model over ``MODEL_SPACE`` (unit scale, zero mean) whose personas sit at ``centroids`` in its first two
    features (the rest 0)."""
    c = np.zeros((len(centroids), MODEL_SPACE.dim))
    c[:, :2] = centroids
    names = names or [f"name of {pid}" for pid in ids]
    dim = MODEL_SPACE.dim
    return ModelSnapshot(
        version, MODEL_SPACE, np.zeros(dim), np.ones(dim), c, tuple(ids), tuple(names), 1000, 10, as_of_ms=as_of_ms
    )
