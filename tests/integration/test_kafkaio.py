"""The test and tool clients' reads against the real broker: the end of a partition is where its last record is,
whatever the broker's ListOffsets answers (the embedded broker answers the start of the last record batch)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from kafka import KafkaConsumer, TopicPartition

from worker.broker import EmbeddedBroker
from worker.kafkaio import create_topics, produce, read_all, true_end_offsets
from worker.refetch import RangeReader

pytestmark = pytest.mark.integration


def test_reads_go_to_the_last_record_of_batches_longer_than_a_poll(broker: EmbeddedBroker) -> None:
    topic = f"ends-{uuid.uuid4().hex[:8]}"
    create_topics(broker.bootstrap, {topic: 3}, 1)
    # two large batches per partition: a poll returns at most 500 records, a fetch the whole batch
    first = [(b"k%d" % (i % 7), b"a%d" % i) for i in range(1500)]
    second = [(b"k%d" % (i % 7), b"b%d" % i) for i in range(1200)]
    produce(broker.bootstrap, topic, first)
    produce(broker.bootstrap, topic, second)
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False, group_id=None)
    try:
        ends = true_end_offsets(consumer, [TopicPartition(topic, p) for p in range(3)])
    finally:
        consumer.close()
    assert sum(ends.values()) == len(first) + len(second)
    records = read_all(broker.bootstrap, topic)
    assert sorted(r.value or b"" for r in records) == sorted(v for _, v in first + second)
    for p, end in ends.items():
        assert max(r.offset for r in records if r.partition == p.partition) == end - 1
    # the worker's own reader (a restart pins its model up to these ends) agrees
    assert asyncio.run(_reader_ends(broker.bootstrap, topic)) == {tp.partition: end for tp, end in ends.items()}
    # asked again after more records, the same consumer sees the new ends (not the high watermarks it saw before)
    third = [(b"k%d" % (i % 7), b"c%d" % i) for i in range(900)]
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False, group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in range(3)]
        assert sum(true_end_offsets(consumer, tps).values()) == len(first) + len(second)
        produce(broker.bootstrap, topic, third)
        assert sum(true_end_offsets(consumer, tps).values()) == len(first) + len(second) + len(third)
    finally:
        consumer.close()


async def _reader_ends(bootstrap: str, topic: str) -> dict[int, int]:
    reader = RangeReader(bootstrap)
    try:
        return await reader.ends(topic, [0, 1, 2])
    finally:
        await reader.stop()
