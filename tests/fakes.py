"""Fakes shared by the unit tests (injected, never patched in)."""

from __future__ import annotations

import asyncio
from typing import Any

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
        if value == self.fail_on:
            fut.set_exception(OSError("broker went away"))
        elif self.auto:
            fut.set_result(len(self.delivered))
            self.delivered.append((topic, value))
        else:
            self.waiting.append((fut, (topic, value)))
        return fut

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
