"""Records sent in batches (worker.producing.BatchSender) against the real broker: each answer is where the record is,
order within a partition is kept, full batches roll over, and a record without a partition goes where aiokafka's own
send puts the same key."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from worker.broker import EmbeddedBroker
from worker.kafkaio import create_topics, read_all
from worker.producing import BatchSender, Delivered, Record

pytestmark = pytest.mark.integration


def test_every_answer_is_where_the_record_landed(broker: EmbeddedBroker) -> None:
    topics = [f"batched-{uuid.uuid4().hex[:8]}", f"batched-{uuid.uuid4().hex[:8]}"]
    plain_topic = f"plain-{uuid.uuid4().hex[:8]}"  # as many partitions as topics[1], written by aiokafka's send
    create_topics(broker.bootstrap, {topics[0]: 4, topics[1]: 3, plain_topic: 3}, 1)
    big = b"x" * 900  # ~18 a batch of the producer's 16 KiB: every partition takes several batches
    records: list[Record] = []
    for i in range(600):
        key = b"user-%d" % (i % 37)
        if i % 3 == 0:
            records.append((topics[0], key, b"%d:" % i + big, i % 4, [("n", str(i).encode())]))
        elif i % 3 == 1:
            records.append((topics[1], key, b"%d:" % i, None, None))  # by the key
        else:
            records.append((topics[0], key, None, (i + 1) % 4, None))  # a tombstone
    answers, plain = asyncio.run(_send(broker.bootstrap, records, topics[1], plain_topic))

    assert len(answers) == len(records)
    landed = {(t, r.partition, r.offset): r for t in topics for r in read_all(broker.bootstrap, t)}
    assert len(landed) == len(records)
    for (topic, key, value, _, headers), at in zip(records, answers, strict=True):
        r = landed[topic, at.partition, at.offset]
        assert (r.key, r.value) == (key, value)
        assert r.headers == dict(headers or [])
    for (_, _, _, partition, _), at in zip(records, answers, strict=True):
        if partition is not None:
            assert at.partition == partition
    # in the order sent, within each partition
    for topic in topics:
        for p in range(4):
            offsets = [
                at.offset for (t, *_), at in zip(records, answers, strict=True) if t == topic and at.partition == p
            ]
            assert offsets == sorted(offsets)
    # the partition a key goes to: aiokafka's send agrees
    by_key = {key: at.partition for (t, key, _, p, _), at in zip(records, answers, strict=True) if t == topics[1]}
    assert by_key == plain
    assert len(set(by_key.values())) > 1


async def _send(
    bootstrap: str, records: list[Record], keyed_topic: str, plain_topic: str
) -> tuple[list[Delivered], dict[bytes | None, int]]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        sender = BatchSender(lambda: producer)
        assert await sender([]) == []
        answers = await sender(records)
        keys = {key for t, key, *_ in records if t == keyed_topic}
        plain = {key: (await producer.send_and_wait(plain_topic, b"plain", key=key)).partition for key in keys}
        return answers, plain
    finally:
        await producer.stop()
