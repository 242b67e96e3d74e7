"""The trainer's host: reads samples from where the published model ends, publishes each fitted model with the
samples offset it covers, and resumes from the published model after a revocation."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from worker.changes import InputRecord, Segmenter
from worker.clustering import ModelSnapshot
from worker.evaluation.engines import encode
from worker.evaluation.run import sized
from worker.features.state import UserState
from worker.routing import partitioner
from worker.runtime.records import sample_chunks
from worker.runtime.training import TrainerHost
from worker.settings import Settings
from worker.synth import generate

USERS = 300
SETTINGS = sized(Settings(partitions=1), USERS)


@dataclass
class Rec:
    offset: int
    value: bytes | None


class FakeSamples:
    """The samples partition as the broker serves it (reads of at most ``max_records``)."""

    def __init__(self, values: list[bytes]) -> None:
        self.records = [Rec(i, v) for i, v in enumerate(values)]
        self.starts: list[int] = []  # where each read began

    async def read(
        self, topic: str, partition: int, start: int, stop: int | None, timeout: float, max_records: int
    ) -> tuple[list[Rec], int]:
        self.starts.append(start)
        got = self.records[start : start + max_records]
        return got, start + len(got)


def sample_records() -> list[bytes]:
    """The training samples a worker writes for a synthetic world, as records of the samples topic."""
    store: dict[str, UserState] = {}
    seg = Segmenter(SETTINGS, store, partitioner(1))
    samples: list[bytes] = []
    events = encode(generate(USERS, 28, seed=4).events)
    records = [InputRecord(v, k, 0, i, 0, i, 0.0) for i, (k, v) in enumerate(events)]
    for i in range(0, len(records), 500):
        res = seg.process(records[i : i + 500], 2**62, 0.0)
        store.update(res.dirty)
        samples.extend(res.samples)
    return list(sample_chunks(samples))


class Published:
    def __init__(self) -> None:
        self.models: list[bytes] = []
        self.commits: list[int] = []

    async def newest(self) -> bytes | None:
        return self.models[-1] if self.models else None

    async def publish(self, raw: bytes) -> None:
        self.models.append(raw)

    async def commit(self, offset: int) -> None:
        self.commits.append(offset)


async def run_until_published(host: TrainerHost, out: Published, models: int) -> int:
    steps = 0
    while len(out.models) < models:
        assert await host.step(), "samples ran out before the model"
        steps += 1
    return steps


def test_models_carry_the_samples_offset_and_a_new_host_resumes_from_them() -> None:
    records = sample_records()
    out = Published()
    host = TrainerHost(SETTINGS, FakeSamples(records), "samples", out.newest, out.publish, out.commit)

    async def scenario() -> None:
        await run_until_published(host, out, 1)
        first = ModelSnapshot.from_bytes(out.models[0])
        assert first.samples_offset == host.samples_from == out.commits[0] > 0
        await host.revoke()  # the samples partition moved: the next owner resumes from the published model
        assert host.trainer is None
        samples = FakeSamples(records)
        other = TrainerHost(SETTINGS, samples, "samples", out.newest, out.publish, out.commit)
        while await other.step():
            pass
        assert samples.starts[0] == first.samples_offset  # nothing folded in twice
        assert other.trainer is not None and other.samples_from == len(records)
        resumed = [ModelSnapshot.from_bytes(raw) for raw in out.models[1:]]
        assert all(m.version > first.version and m.samples_offset > first.samples_offset for m in resumed)

    asyncio.run(scenario())


def test_a_commit_refused_during_a_rebalance_is_not_an_error() -> None:
    out = Published()

    async def refuse(offset: int) -> None:
        raise RuntimeError("rebalance in progress")

    host = TrainerHost(SETTINGS, FakeSamples(sample_records()), "samples", out.newest, out.publish, refuse)
    asyncio.run(run_until_published(host, out, 1))
    assert not asyncio.run(TrainerHost(SETTINGS, FakeSamples([]), "s", out.newest, out.publish, refuse).step())
