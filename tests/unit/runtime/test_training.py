"""The trainer's host: reads samples from where the published model ends, publishes each fitted model with the
samples offset it covers, and resumes from the published model after a revocation."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_info, threadpool_limits

from worker.changes import InputRecord, Segmenter
from worker.clustering import ModelSnapshot
from worker.evaluation.engines import encode
from worker.evaluation.run import sized
from worker.features.state import UserState
from worker.routing import partitioner
from worker.runtime.fitting import Fitter, limit_blas
from worker.runtime.records import sample_chunks
from worker.runtime.training import TrainerHost
from worker.settings import Settings
from worker.synth import generate

USERS = 300
SETTINGS = sized(Settings(partitions=1), USERS)
IN_PROCESS = dataclasses.replace(SETTINGS, trainer_process=True)


@dataclass
class Rec:
    offset: int
    value: bytes | None


class FakeSamples:
    """The samples partition as the broker serves it (reads of at most ``max_records``)."""

    def __init__(self, values: list[bytes], per_read: int = 1_000) -> None:
        self.records = [Rec(i, v) for i, v in enumerate(values)]
        self.per_read = per_read  # records a read returns at most (besides max_records)
        self.starts: list[int] = []  # where each read began

    async def read(
        self, topic: str, partition: int, start: int, stop: int | None, timeout: float, max_records: int
    ) -> tuple[list[Rec], int]:
        self.starts.append(start)
        got = self.records[start : start + min(max_records, self.per_read)]
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
        self.announced: list[tuple[int, list[str]]] = []  # (models published before, the events' ids)

    async def newest(self) -> bytes | None:
        return self.models[-1] if self.models else None

    async def publish(self, raw: bytes) -> None:
        self.models.append(raw)

    async def commit(self, offset: int) -> None:
        self.commits.append(offset)

    async def announce(self, events: tuple[dict[str, Any], ...]) -> None:
        self.announced.append((len(self.models), [e["event_id"] for e in events]))


async def run_until_published(host: TrainerHost, out: Published, models: int) -> int:
    steps = 0
    while len(out.models) < models:
        assert await host.step(), "samples ran out before the model"
        steps += 1
    return steps


def test_models_carry_the_samples_offset_and_a_new_host_resumes_from_them() -> None:
    records = sample_records()
    out = Published()
    host = TrainerHost(SETTINGS, FakeSamples(records), "samples", out.newest, out.publish, out.commit, out.announce)

    async def scenario() -> None:
        await run_until_published(host, out, 1)
        first = ModelSnapshot.from_bytes(out.models[0])
        assert first.samples_offset == host.samples_from == out.commits[0] > 0
        await host.revoke()  # the samples partition moved: the next owner resumes from the published model
        assert host.fitter is None
        samples = FakeSamples(records)
        other = TrainerHost(SETTINGS, samples, "samples", out.newest, out.publish, out.commit, out.announce)
        while await other.step():
            pass
        assert samples.starts[0] == first.samples_offset  # nothing folded in twice
        assert other.fitter is not None and other.samples_from == len(records)
        resumed = [ModelSnapshot.from_bytes(raw) for raw in out.models[1:]]
        assert all(m.version > first.version and m.samples_offset > first.samples_offset for m in resumed)

    asyncio.run(scenario())


def test_persona_changes_are_announced_after_their_model_and_again_by_the_next_trainer() -> None:
    """A model that changed the personas is published, then its events are announced (a reader of the events finds
    the model they speak of); a trainer that resumes from it announces them again, with the same ids: the one
    before may have stopped between the two."""
    records = sample_records()
    out = Published()
    host = TrainerHost(SETTINGS, FakeSamples(records), "samples", out.newest, out.publish, out.commit, out.announce)
    asyncio.run(run_until_published(host, out, 1))
    first = ModelSnapshot.from_bytes(out.models[0])
    assert first.changes == () and out.announced == []  # a first model changes no persona
    event = {"event_id": "e" * 32, "kind": "emerged", "from": [], "to": [{"id": "p9"}]}
    changed = dataclasses.replace(first, version=first.version + 1, changes=(event,))
    asyncio.run(host._published(changed))
    assert out.announced == [(2, ["e" * 32])]  # after the model: two published by then
    again = TrainerHost(SETTINGS, FakeSamples(records), "samples", out.newest, out.publish, out.commit, out.announce)
    asyncio.run(again.step())
    assert out.announced[1] == (2, ["e" * 32])


def test_a_commit_refused_during_a_rebalance_is_not_an_error() -> None:
    out = Published()

    async def refuse(offset: int) -> None:
        raise RuntimeError("rebalance in progress")

    host = TrainerHost(
        SETTINGS, FakeSamples(sample_records()), "samples", out.newest, out.publish, refuse, out.announce
    )
    asyncio.run(run_until_published(host, out, 1))
    assert not asyncio.run(
        TrainerHost(SETTINGS, FakeSamples([]), "s", out.newest, out.publish, refuse, out.announce).step()
    )


def _models(settings: Settings, records: list[bytes], per_read: int = 1_000) -> list[bytes]:
    out = Published()
    host = TrainerHost(
        settings, FakeSamples(records, per_read), "samples", out.newest, out.publish, out.commit, out.announce
    )

    async def scenario() -> None:
        while await host.step():
            pass
        await host.revoke()

    asyncio.run(scenario())
    return out.models


def test_a_fitting_process_and_a_thread_fit_the_same_models() -> None:
    records = sample_records()
    in_process = _models(IN_PROCESS, records)
    assert in_process
    assert _models(dataclasses.replace(SETTINGS, trainer_process=False), records) == in_process


def test_a_killed_fitting_process_is_replaced_from_the_published_model() -> None:
    """Killed before the first model: the next process starts again from the samples' beginning, and the models
    are those of an undisturbed run."""
    records = sample_records()
    out = Published()
    host = TrainerHost(
        IN_PROCESS, FakeSamples(records, 2), "samples", out.newest, out.publish, out.commit, out.announce
    )

    async def scenario() -> None:
        assert await host.step()
        assert host.fitter is not None and not out.models
        pid = await host.fitter.pid()
        assert pid != os.getpid()
        os.kill(pid, signal.SIGKILL)
        assert await host.step()  # the loss noticed: no fitter until the next step
        assert host.fitter is None
        while await host.step():
            pass
        assert host.fitter is not None and await host.fitter.pid() != pid
        await host.revoke()

    asyncio.run(scenario())
    assert out.models and out.models == _models(IN_PROCESS, records, 2)


def test_the_fitting_process_ends_with_a_killed_worker(tmp_path: Path) -> None:
    """A SIGKILLed worker cannot shut its fitting process down: the process notices and exits."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import asyncio, sys\n"
        "from worker.runtime.fitting import Fitter\n"
        "from worker.settings import Settings\n"
        "async def main():\n"
        "    f = Fitter(Settings(), None, True)\n"
        "    print(await f.pid(), flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "if __name__ == '__main__':\n"
        "    asyncio.run(main())\n"
    )
    with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True) as parent:
        try:
            assert parent.stdout is not None
            child = int(parent.stdout.readline())
            assert _alive(child)
            os.kill(parent.pid, signal.SIGKILL)
            parent.wait(5)
            deadline = time.monotonic() + 10
            while _alive(child) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not _alive(child)
        finally:
            parent.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_the_fitting_process_runs_at_the_niceness_set() -> None:
    async def scenario() -> tuple[int, int]:
        nice = Fitter(dataclasses.replace(IN_PROCESS, trainer_nice=7), None, True)
        plain = Fitter(dataclasses.replace(IN_PROCESS, trainer_nice=0), None, True)
        try:
            return (
                os.getpriority(os.PRIO_PROCESS, await nice.pid()),
                os.getpriority(os.PRIO_PROCESS, await plain.pid()),
            )
        finally:
            nice.close()
            plain.close()

    mine = os.getpriority(os.PRIO_PROCESS, 0)
    assert asyncio.run(scenario()) == (min(19, mine + 7), mine)


def test_blas_threads_are_limited_as_set() -> None:
    def blas_threads() -> set[int]:
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    with threadpool_limits(limits=2, user_api="blas"):  # restored afterwards
        assert blas_threads() == {2}
        limit_blas(0)  # the library's own: untouched
        assert blas_threads() == {2}
        limit_blas(1)
        assert blas_threads() == {1}
