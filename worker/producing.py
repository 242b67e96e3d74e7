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

from worker.errors import SegmentWorkerError

# (topic, key, value (None: a tombstone), partition (None: by the key), headers)
Record = tuple[str, bytes | None, bytes | None, int | None, list[tuple[str, bytes]] | None]


class ProducerError(SegmentWorkerError):
    """A record the producer's batches cannot take."""


class Delivered(NamedTuple):
    partition: int
    offset: int


class _Batch(NamedTuple):
    topic: str
    partition: int
    indexes: list[int]  # of its records in the list sent, in order


class ProducerSender:
    """A :class:`BatchSender` on a producer of its own, made and started by :meth:`start` in the running loop
    (aiokafka binds a producer to the loop it is made in) and stopped, with what it holds sent, by :meth:`stop`."""

    def __init__(self, make_producer: Callable[[], AIOKafkaProducer]) -> None:
        self._make_producer = make_producer
        self._producer: AIOKafkaProducer | None = None
        self._send = BatchSender(self._started)

    async def start(self) -> None:
        producer = self._make_producer()
        await producer.start()
        self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def __call__(self, records: Sequence[Record]) -> list[Delivered]:
        return await self._send(records)

    def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise ProducerError("records sent before the producer started")
        return self._producer


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
        sent: list[tuple[_Batch, asyncio.Future[Any]]] = []
        for (topic, partition), indexes in (await self._by_partition(producer, records)).items():
            sent += await self._send_partition(producer, records, _Batch(topic, partition, indexes))
        answers: list[Delivered] = [Delivered(-1, -1)] * len(records)
        metas = await asyncio.gather(*(future for _, future in sent))
        for (batch, _), meta in zip(sent, metas, strict=True):
            base = meta.offset if meta is not None else -1  # (none with acks=0)
            for j, i in enumerate(batch.indexes):
                answers[i] = Delivered(batch.partition, base + j if base >= 0 else -1)
        return answers

    async def _send_partition(
        self, producer: AIOKafkaProducer, records: Sequence[Record], todo: _Batch
    ) -> list[tuple[_Batch, asyncio.Future[Any]]]:
        """The records of one topic partition in as few batches as hold them, each sent once full."""
        sent = []
        builder, first = producer.create_batch(), 0
        for n, i in enumerate(todo.indexes):
            _, key, value, _, headers = records[i]
            while builder.append(key=key, value=value, timestamp=None, headers=headers or []) is None:
                if n == first:  # aiokafka takes any record into an empty batch: this would loop
                    raise ProducerError(f"a record of {len(value or b'')} bytes refused by an empty batch")
                # full: what it holds goes now, the record starts the next batch
                sent.append((todo._replace(indexes=todo.indexes[first:n]), await self._send(producer, builder, todo)))
                builder, first = producer.create_batch(), n
        sent.append((todo._replace(indexes=todo.indexes[first:]), await self._send(producer, builder, todo)))
        return sent

    @staticmethod
    async def _send(producer: AIOKafkaProducer, builder: Any, to: _Batch) -> asyncio.Future[Any]:
        builder.close()  # a plain send to the partition meanwhile goes into a batch of its own
        future: asyncio.Future[Any] = await producer.send_batch(builder, to.topic, partition=to.partition)
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
