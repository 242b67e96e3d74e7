"""Records to Kafka in batches: one batch per topic partition through aiokafka's batch API.

The worker writes thousands of records per batch of events (changes, user states, positions). Sent one by one,
aiokafka's producer checks the topic's metadata, serialises, sizes, partitions and makes a future for each: a fifth
of the worker's event loop in a profile of the throughput bench. Here a list of records becomes one
``BatchBuilder`` per topic partition (more when one fills), each sent with one future; a record's answer is where it
landed, (partition, offset), from its batch's base offset.

Records keep their order within a partition, as the producer keeps it. A record without a partition goes where the
producer's default partitioner sends it (murmur2 of the key, a random partition without one): the same partition
as a plain ``send`` would pick, so a user's records stay on one partition across versions.

Pure aiokafka; no Faust.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

# (topic, key, value (None: a tombstone), partition (None: by the key), headers)
Record = tuple[str, bytes | None, bytes | None, int | None, list[tuple[str, bytes]] | None]


class Delivered(NamedTuple):
    partition: int
    offset: int


class _Batch(NamedTuple):
    topic: str
    partition: int
    indexes: list[int]  # of its records in the list sent


class BatchSender:
    """``await sender(records)`` sends them and returns each one's :class:`Delivered`, in order, once all are
    acknowledged; raises the first delivery error."""

    def __init__(self, producer: Callable[[], AIOKafkaProducer]) -> None:
        self._producer = producer  # called at each send: the producer may start (or restart) after this is made
        self._partitioner = DefaultPartitioner()

    async def __call__(self, records: Sequence[Record]) -> list[Delivered]:
        if not records:
            return []
        producer = self._producer()
        batches: list[_Batch] = []
        futures: list[asyncio.Future[Any]] = []
        for (topic, partition), indexes in (await self._by_partition(producer, records)).items():
            builder = producer.create_batch()
            first = 0
            for n, i in enumerate(indexes):
                _, key, value, _, headers = records[i]
                if builder.append(key=key, value=value, timestamp=None, headers=headers or []) is not None:
                    continue
                # full: what it holds goes now, the record starts the next batch (a first record always fits)
                futures.append(await self._send(producer, builder, topic, partition))
                batches.append(_Batch(topic, partition, indexes[first:n]))
                builder, first = producer.create_batch(), n
                builder.append(key=key, value=value, timestamp=None, headers=headers or [])
            futures.append(await self._send(producer, builder, topic, partition))
            batches.append(_Batch(topic, partition, indexes[first:]))
        answers: list[Delivered] = [Delivered(-1, -1)] * len(records)
        for batch, meta in zip(batches, await asyncio.gather(*futures), strict=True):
            base = meta.offset if meta is not None else -1  # (none with acks=0)
            for j, i in enumerate(batch.indexes):
                answers[i] = Delivered(batch.partition, base + j if base >= 0 else -1)
        return answers

    @staticmethod
    async def _send(producer: AIOKafkaProducer, builder: Any, topic: str, partition: int) -> asyncio.Future[Any]:
        builder.close()  # a plain send to the partition meanwhile goes into a batch of its own
        future: asyncio.Future[Any] = await producer.send_batch(builder, topic, partition=partition)
        return future

    async def _by_partition(
        self, producer: AIOKafkaProducer, records: Sequence[Record]
    ) -> dict[tuple[str, int], list[int]]:
        """The records' indexes by the topic partition each goes to, in order."""
        out: dict[tuple[str, int], list[int]] = {}
        known: dict[str, list[int]] = {}  # topic -> its partitions, sorted (as the producer hands them over)
        for i, (topic, key, _, partition, _) in enumerate(records):
            if partition is None:
                partitions = known.get(topic)
                if partitions is None:
                    partitions = known[topic] = sorted(await producer.partitions_for(topic))
                partition = self._partitioner(key, partitions, partitions)
            where = (topic, partition)
            if where in out:
                out[where].append(i)
            else:
                out[where] = [i]
        return out
