"""A restarted worker re-applies what its crashed run applied under the model that run used (without a broker: a
real topology, the real core, a fake producer). The crash is the outbox's weak point: a batch's changes delivered,
its users' states and positions not."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

from tests.fakes import Assigned, FakeChangelog, FakeProducer, FakeTopics
from tests.unit.builders import T0, two_persona_model
from worker import codec
from worker.changes import Segmenter
from worker.clustering import ModelSnapshot
from worker.features import wire
from worker.outbox import Outbox
from worker.routing import partitioner
from worker.runtime import faust_internals as fi
from worker.runtime import pipeline as pipeline_module
from worker.runtime import topology
from worker.runtime.modelpin import MODEL_KEY, ModelPin, changelog_key, recorded_version, slot_key
from worker.runtime.ownership import meta_keys
from worker.runtime.pipeline import Pipeline
from worker.runtime.positions import Positions
from worker.runtime.records import BY_USER, INPUT, input_record
from worker.settings import Settings

S = Settings(partitions=2, app_id="unit", input_topic="events", output_topic="changes", dlq_topic="dlq")
START = 100  # where the fake logs begin
V1 = two_persona_model(S)
V2 = dataclasses.replace(V1, version=2)


class FakeLogs:
    """The broker's side of the offset gate: where each log begins and ends."""

    def __init__(self, ends: dict[tuple[str, int], int]) -> None:
        self._ends = ends
        self.asked: list[str] = []

    async def beginning(self, topic: str, partitions: list[int]) -> dict[int, int]:
        return dict.fromkeys(partitions, START)

    async def ends(self, topic: str, partitions: list[int]) -> dict[int, int]:
        self.asked.append(topic)
        return {p: self._ends.get((topic, p), START) for p in partitions}


def worker(models: list[ModelSnapshot], metas: dict[int, dict[str, Any]], logs: FakeLogs) -> tuple[Pipeline, Any]:
    """A starting worker: the models table holds ``models`` (the last one current), the partitions' position
    records ``metas``; it owns both partitions."""
    topo = topology.build(S, with_memberships=False)
    for snap in models:
        topo.stage(topo.models, slot_key(snap.version), snap.to_bytes())
        topo.stage(topo.models, MODEL_KEY, snap.to_bytes())
    for p, meta in metas.items():
        topo.stage(topo.part_meta, meta_keys(S.partitions)[p], codec.dumps(meta))
    producer = FakeProducer()
    outbox = Outbox(producer.send_all)
    segmenter = Segmenter(S, wire.EncodedStates(fi.values(topo.users)), partitioner(S.partitions))
    positions = Positions(topo.stream_topics)
    topics: Any = FakeTopics()
    own = Assigned(S, topo, FakeChangelog(), positions, segmenter, outbox, topics, logs.beginning)  # type: ignore[arg-type]
    own.partitions = {0, 1}
    pipeline = Pipeline(S, topo, segmenter, positions, own, outbox, topics, logs, partitioner(S.partitions))
    return pipeline, producer


def batch() -> list[Any]:
    """Four events of each of three users of partition 0: each gets a persona from the model at the third."""
    owner = partitioner(S.partitions)
    users = [u for u in (f"user-{i}" for i in range(40)) if owner(u) == 0][:3]
    values = [
        codec.dumps({"user_id": u, "event_type": "purchase", "timestamp": T0 + 60_000 * i, "value": 20.0})
        for i in range(4)
        for u in users
    ]
    return [input_record(INPUT, 0, START + i, b"k", v, None, S.partitions, 0.0) for i, v in enumerate(values)]


def run(pipeline: Pipeline, *steps: list[Any] | Callable[[], None] | None) -> None:
    """Each step: a batch through the pipeline, (None) a timer's catch-up, or a check; everything delivered after
    each."""

    async def scenario() -> None:
        delivery = asyncio.create_task(pipeline.outbox.run())
        for records in steps:
            if records is None:
                async with pipeline.lock:
                    await pipeline.catch_up()
            elif callable(records):
                records()
            else:
                await pipeline.handle(INPUT, records)
            await pipeline.outbox.drain()
        delivery.cancel()

    asyncio.run(scenario())


def changes(producer: FakeProducer) -> list[bytes]:
    return [value for topic, value in producer.delivered if topic == "changes"]


def metas(producer: FakeProducer) -> list[dict[str, Any]]:
    return [codec.loads(value) for topic, value in producer.delivered if topic == "unit-partition-meta-changelog"]


def test_a_restart_re_applies_under_the_model_the_crashed_run_used_then_adopts_the_newest() -> None:
    logs = FakeLogs({("events", 0): START + len(batch())})
    first, delivered = worker([V1], {}, logs)
    run(first, batch())
    before = changes(delivered)
    assert {codec.loads(c)["model_version"] for c in before} == {0, 1}  # moves to `new`, then model-decided
    # the model was recorded with both partitions' positions, delivered before any record was applied under it
    first_change = next(i for i, (topic, _) in enumerate(delivered.delivered) if topic == "changes")
    recorded = [codec.loads(v) for t, v in delivered.delivered[:first_change] if t.endswith("meta-changelog")]
    assert [m["model"] for m in recorded] == [1, 1]

    # the crash: the batch's changes were delivered, its states and positions were not. The trainer published
    # v2 meanwhile; the restarted worker finds the positions from before the batch, recorded with model 1
    durable = {p: {"max_ts": 0, "model": 1, INPUT: START} for p in (0, 1)}
    again, redelivered = worker([V1, V2], durable, logs)

    def under_v1() -> None:
        assert changes(redelivered) == before  # byte for byte: same model, same confidences and reasons
        assert again.segmenter.model is not None and again.segmenter.model.version == 1

    run(again, batch(), under_v1, None)  # then past where the log ended at the start: the newest model
    assert again.segmenter.model is not None and again.segmenter.model.version == 2 and not again.pin.active
    assert [m["model"] for m in metas(redelivered)[-2:]] == [2, 2]

    # without the model in the position records (a worker of an earlier release), the newest is used at once
    unpinned, other = worker([V1, V2], {p: {"max_ts": 0, INPUT: START} for p in (0, 1)}, logs)
    run(unpinned, batch())
    assert changes(other) != before and {codec.loads(c)["model_version"] for c in changes(other)} == {0, 2}


def test_no_pin_when_the_recorded_model_is_gone_or_nothing_is_left_to_re_apply() -> None:
    durable = {p: {"max_ts": 0, "model": 1, INPUT: START} for p in (0, 1)}
    # v1's slot taken by v17: the newest model, and a warning
    gone = dataclasses.replace(V1, version=17)
    pipeline, _ = worker([V2, gone], durable, FakeLogs({("events", 0): START + 5}))
    run(pipeline, None)
    assert not pipeline.pin.active and pipeline.segmenter.model is not None
    assert pipeline.segmenter.model.version == 17
    # every log ends where the positions stand: nothing was applied after them
    caught_up, _ = worker([V1, V2], durable, FakeLogs({}))
    run(caught_up, None)
    assert not caught_up.pin.active and caught_up.segmenter.model is not None
    assert caught_up.segmenter.model.version == 2


def test_a_newer_model_waits_for_the_write_of_the_waiting_states_at_most_a_second(monkeypatch: Any) -> None:
    """Adopting a model is a sealed write of every state waiting (the batches stall meanwhile): while some wait
    and their write is not due, a newer model waits for that write, and never longer than ADOPTION_MAX_WAIT. The
    first model is not held (users wait for a persona)."""
    pipeline, producer = worker([V1], {}, FakeLogs({}))

    def version() -> int:
        model = pipeline.segmenter.model
        return 0 if model is None else model.version

    async def scenario() -> list[tuple[int, bool]]:
        delivery = asyncio.create_task(pipeline.outbox.run())
        seen = []
        await pipeline.handle(INPUT, batch())  # the first model, at once; positions (and states) wait for 1 s
        seen.append((version(), pipeline.writes.pending))
        pipeline.topo.stage(pipeline.topo.models, MODEL_KEY, V2.to_bytes())  # the trainer publishes v2
        async with pipeline.lock:
            await pipeline.catch_up()  # held: a write of its own would come before the one due
        seen.append((version(), pipeline.writes.pending))
        await pipeline.write_now()  # the write (due, or a timer's): the next catch-up takes v2
        async with pipeline.lock:
            await pipeline.catch_up()
        seen.append((version(), pipeline.writes.pending))
        await pipeline.outbox.drain()
        delivery.cancel()
        return seen

    assert asyncio.run(scenario()) == [(1, True), (1, True), (2, False)]
    # v1's records, then v2's (the write's record of partition 0 went out in v2's sealed round, replaced by it)
    assert [m["model"] for m in metas(producer)] == [1, 1, 2, 2]

    # held no longer than ADOPTION_MAX_WAIT, however long the write interval
    monkeypatch.setattr(pipeline_module, "ADOPTION_MAX_WAIT", 0.0)
    again, _ = worker([V1], {}, FakeLogs({}))

    async def unheld() -> int:
        delivery = asyncio.create_task(again.outbox.run())
        await again.handle(INPUT, batch())
        again.topo.stage(again.topo.models, MODEL_KEY, V2.to_bytes())
        async with again.lock:
            await again.catch_up()
        await again.outbox.drain()
        delivery.cancel()
        return again.segmenter.model.version if again.segmenter.model is not None else 0

    assert asyncio.run(unheld()) == 2


def test_the_pin_ends_when_every_position_reaches_its_end() -> None:
    pin = ModelPin()
    assert not pin.release_reached([(INPUT, 0, 5)])
    pin.hold(3, {(INPUT, 0): 10, (BY_USER, 1): 4})
    assert not pin.release_reached([(INPUT, 0, 10), (BY_USER, 1, 3)]) and pin.until == {(BY_USER, 1): 4}
    assert pin.version == 3
    assert pin.release_reached([(INPUT, 0, 10)])  # partition 1 no longer open: nothing of it to re-apply here
    assert not pin.active


def test_the_recorded_version_is_the_newest_any_record_names() -> None:
    assert recorded_version([{"model": 2}, {"model": 3}, {}]) == 3
    assert recorded_version([{"max_ts": 1}]) is None
    assert recorded_version([{"model": 0}]) == 0


def test_changelog_key_is_the_key_faust_writes_for_the_models_table() -> None:
    """Readers of the models' changelog outside Faust (the trigger service, the report) find `current` by it: the
    table's str keys go out JSON-encoded, not as their raw bytes."""
    topo = topology.build(S, with_memberships=False)
    for key in (MODEL_KEY, slot_key(3)):
        _, wire_key, *_ = topo.stage(topo.models, key, b"{}")
        assert wire_key == changelog_key(key) != key.encode()
