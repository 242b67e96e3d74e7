"""One batch through the pipeline without a broker: a real topology (the Faust app is built, never started), the
real core, a fake producer. What goes out, in which order, and what becomes durable when."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from tests.fakes import FakeProducer
from worker import codec
from worker.changes import BatchResult, Segmenter
from worker.features import wire
from worker.kafkaio import Record
from worker.outbox import Outbox
from worker.routing import partitioner
from worker.runtime import faust_internals as fi
from worker.runtime import topology
from worker.runtime.handoff import Fetched
from worker.runtime.ownership import Ownership
from worker.runtime.pipeline import Pipeline
from worker.runtime.positions import Positions
from worker.runtime.records import ERASURES, INPUT, input_record
from worker.settings import Settings

S = Settings(partitions=2, app_id="unit", input_topic="events", output_topic="changes", dlq_topic="dlq")
EVERY_BATCH = S.replace(state_write_interval=0.0)  # states and positions written with each batch
T0 = 1_767_225_600_000  # 2026-01-01


class Topics:
    ok = True


def build(s: Settings = EVERY_BATCH) -> tuple[Pipeline, FakeProducer, Outbox]:
    topo = topology.build(s, with_memberships=False)
    producer = FakeProducer()
    outbox = Outbox(producer.send_all)
    segmenter = Segmenter(s, wire.EncodedStates(fi.values(topo.users)), partitioner(s.partitions))
    positions = Positions(topo.stream_topics)
    topics: Any = Topics()
    own = Ownership(s, topo, None, positions, segmenter, outbox, topics, None)  # type: ignore[arg-type]
    pipeline = Pipeline(s, topo, segmenter, positions, own, outbox, topics, None, partitioner(s.partitions))
    return pipeline, producer, outbox


def owned_users(partition: int) -> list[str]:
    owner = partitioner(S.partitions)
    return [u for u in (f"user-{i}" for i in range(40)) if owner(u) == partition][:3]


def records(partition: int, first: int = 10, t: int = T0) -> list[Any]:
    """Events of users owned by ``partition``, one of them keyed to another, and a record that is no event (at
    offsets from ``first``)."""
    owner = partitioner(S.partitions)
    users = owned_users(partition)
    values = [codec.dumps({"user_id": u, "event_type": "view", "timestamp": t + i}) for i, u in enumerate(users)]
    values.append(b"{not json")
    stranger = next(u for u in (f"other-{i}" for i in range(40)) if owner(u) != partition)
    values.append(codec.dumps({"user_id": stranger, "event_type": "view", "timestamp": t}))
    return [input_record(INPUT, partition, first + i, b"k", v, None, S.partitions, 0.0) for i, v in enumerate(values)]


def run_batches(pipeline: Pipeline, producer: FakeProducer, outbox: Outbox, *batches: list[Any]) -> list[Any]:
    """Each batch through the pipeline, then delivered: (what was durable before the delivery, records delivered
    so far) after each."""

    async def scenario() -> list[Any]:
        delivery = asyncio.create_task(outbox.run())
        out = []
        for batch in batches:
            await pipeline.handle(INPUT, batch)
            durable = pipeline.positions.to_commit()
            await outbox.drain()
            out.append((durable, len(producer.delivered)))
        delivery.cancel()
        return out

    return asyncio.run(scenario())


def test_outputs_then_states_then_positions_and_only_then_durable() -> None:
    pipeline, producer, outbox = build()
    pipeline.positions.open(INPUT, 0, 10, 0.0)
    ((durable_before, _),) = run_batches(pipeline, producer, outbox, records(0))
    assert durable_before == {}  # nothing durable before the outbox delivered it
    topics = [topic for topic, _ in producer.delivered]
    kinds = ["out" if t in ("unit-events-by-user", "dlq", "changes") else t for t in topics]
    first_state, first_meta = kinds.index("unit-users-changelog"), kinds.index("unit-partition-meta-changelog")
    assert set(kinds[:first_state]) == {"out"} and set(kinds[first_state:first_meta]) == {"unit-users-changelog"}
    assert kinds[first_meta:] == ["unit-partition-meta-changelog"]
    assert Counter(topics) == {
        "changes": 3,  # three users' first change: null -> new
        "unit-events-by-user": 1,  # the stranger, to its owner's partition
        "dlq": 1,
        "unit-users-changelog": 3,
        "unit-partition-meta-changelog": 1,
    }
    meta = codec.loads(producer.delivered[-1][1])
    assert meta == {"max_ts": T0 + 2, "model": 0, INPUT: 15}  # the next offset after the batch; no model yet
    assert pipeline.positions.to_commit() == {(INPUT, 0): 15}  # durable once delivered: the group may be told


def test_a_redelivered_batch_sends_nothing() -> None:
    pipeline, producer, outbox = build()
    pipeline.positions.open(INPUT, 0, 10, 0.0)
    # the consumer delivers the batch again (a rebalance, a seek): the gate drops it
    (_, first), (_, again) = run_batches(pipeline, producer, outbox, records(0), records(0))
    assert first == 9 and again == first


def test_the_event_loop_gets_a_turn_after_each_batch_of_a_take() -> None:
    """A batch holds the event loop while the core runs, and the next fetch is usually queued already: without a
    turn in between, consecutive batches starve the outbox's sends and the broker's answers (every change waits)."""
    pipeline, _, outbox = build()
    pipeline.positions.open(INPUT, 0, 10, 0.0)
    fetched = [Record(r.partition, r.offset, r.key, r.value, {}) for r in records(0)]

    async def scenario() -> list[str]:
        delivery = asyncio.create_task(outbox.run())
        turns: list[str] = []
        asyncio.get_running_loop().call_soon(turns.append, "loop")
        await pipeline.take([Fetched(fi.generation(pipeline.app), INPUT, 0, fetched)])
        turns.append("take returned")
        delivery.cancel()
        return turns

    assert asyncio.run(scenario()) == ["loop", "take returned"]


def delivered_kinds(producer: FakeProducer) -> Counter[str]:
    outputs = ("unit-events-by-user", "dlq", "changes", "unit-training-samples")
    return Counter("out" if t in outputs else t for t, _ in producer.delivered)


def test_states_wait_for_their_interval_and_each_user_is_written_once() -> None:
    """Under the default interval a batch's outputs go out at once, and with them the states of the users they
    are about (their first change); states without an output wait: those of two more batches go once per user,
    with the position after the last batch, and only then is anything durable."""
    pipeline, producer, outbox = build(S)
    pipeline.positions.open(INPUT, 0, 10, 0.0)

    async def scenario() -> list[tuple[Counter[str], Any]]:
        delivery = asyncio.create_task(outbox.run())
        seen = []
        for first, t in ((10, T0), (15, T0 + 1000), (20, T0 + 2000)):
            await pipeline.handle(INPUT, records(0, first, t))
            await pipeline.write_due()  # a timer's tick inside the interval: nothing is due
            await outbox.drain()
            seen.append((delivered_kinds(producer), pipeline.positions.to_commit()))
        await pipeline.write()
        await outbox.drain()
        seen.append((delivered_kinds(producer), pipeline.positions.to_commit()))
        delivery.cancel()
        return seen

    first, second, third, written = asyncio.run(scenario())
    assert first == ({"out": 5, "unit-users-changelog": 3}, {})  # 3 first changes, a dead letter, a stranger
    assert second == ({"out": 7, "unit-users-changelog": 3}, {})  # no change: the states wait
    assert third == ({"out": 10, "unit-users-changelog": 3}, {})  # a training sample (third events): no state
    assert written == ({"out": 10, "unit-users-changelog": 6, "unit-partition-meta-changelog": 1}, {(INPUT, 0): 25})
    assert codec.loads(producer.delivered[-1][1])[INPUT] == 25
    users = pipeline.topo.users
    assert all(wire.decode(users[u]).n == 3 for u in owned_users(0))  # the newest state, all three events in it


def test_a_state_waiting_is_read_by_the_next_batch_and_an_erasure_replaces_it() -> None:
    """The next batch reads a state waiting for its write (never the table's older one), and an erasure's
    deletion is what is written in the end, not the state before it."""
    pipeline, producer, outbox = build(S)
    pipeline.positions.open(INPUT, 0, 10, 0.0)
    pipeline.positions.open(ERASURES, 0, 0, 0.0)
    gone, stays = owned_users(0)[:2]
    erasure = codec.dumps({"user_id": gone, "requested_at": T0 + 5000})

    async def scenario() -> None:
        delivery = asyncio.create_task(outbox.run())
        await pipeline.handle(INPUT, records(0))
        await pipeline.write()
        await outbox.drain()
        await pipeline.handle(INPUT, records(0, 15, T0 + 1000))
        await pipeline.handle(ERASURES, [input_record(ERASURES, 0, 0, b"k", erasure, None, S.partitions, 0.0)])
        await pipeline.write()
        await outbox.drain()
        delivery.cancel()

    asyncio.run(scenario())
    written = [v for t, v in producer.sent if t == "unit-users-changelog"]
    assert sorted(v is None for v in written[3:]) == [False, False, True]  # the second: one deletion, no state of it
    assert gone not in pipeline.topo.users and wire.decode(pipeline.topo.users[stays]).n == 2


def test_a_sealed_write_takes_the_waiting_states_with_it() -> None:
    """The record of a newly adopted model (sealed) carries every state waiting: nothing written later, under the
    new model, may land before the states its changes follow from."""
    pipeline, producer, outbox = build(S)
    pipeline.positions.open(INPUT, 0, 10, 0.0)

    async def scenario() -> None:
        delivery = asyncio.create_task(outbox.run())
        await pipeline.handle(INPUT, records(0))
        await pipeline.publish(BatchResult(), {0}, seal=True)  # as Pipeline._record_model does
        await outbox.drain()
        delivery.cancel()

    asyncio.run(scenario())
    assert delivered_kinds(producer) == {"out": 5, "unit-users-changelog": 3, "unit-partition-meta-changelog": 1}
    assert pipeline.segmenter.unwritten == 0 and not pipeline.writes.pending


def test_a_timer_writes_an_interval_that_ended_with_no_batch_since() -> None:
    """No batch comes after the last one (the stream paused): the timer's tick writes its states once the interval
    is over, and only then."""
    pipeline, producer, outbox = build(S.replace(state_write_interval=0.2))
    pipeline.positions.open(INPUT, 0, 10, 0.0)

    async def scenario() -> tuple[Counter[str], Counter[str]]:
        delivery = asyncio.create_task(outbox.run())
        await pipeline.handle(INPUT, records(0))
        await pipeline.handle(INPUT, records(0, 15, T0 + 1000))  # no output about the users: their states wait
        await pipeline.write_due()
        await outbox.drain()
        early = delivered_kinds(producer)
        await asyncio.sleep(0.25)
        await pipeline.write_due()
        await outbox.drain()
        delivery.cancel()
        return early, delivered_kinds(producer)

    early, late = asyncio.run(scenario())
    assert early["unit-users-changelog"] == 3 and "unit-partition-meta-changelog" not in early
    assert late["unit-users-changelog"] == 6 and late["unit-partition-meta-changelog"] == 1
    assert pipeline.positions.to_commit() == {(INPUT, 0): 20}
