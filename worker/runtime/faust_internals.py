"""Every use of Faust's private API, in one place to review when Faust changes.

Checked against faust-streaming 0.15.3 (the range ``>=0.15,<0.16`` in pyproject.toml; mode-streaming as it
requires). What each use relies on:

- tables on the memory store: ``table.data.data`` (key → value) and ``table.data._key_partition`` (key → changelog
  partition), written directly by the worker (:func:`values`, :func:`key_partitions`);
- ``Table.persisted_offset`` overridden so Faust's recovery skips the per-partition tables
  (:class:`SelfRecoveredTable`), and ``partition_for_key`` so writes outside an event know their partition;
- the consumer's fetch loop racing ``deliver(message)`` against ``suspend_flow.wait()`` through ``wait_first``
  (:func:`direct_delivery`), and the fetch itself: ``Consumer._wait_next_records`` returns the fetched
  ``{TP: [ConsumerRecord]}`` (a dict it iterates afterwards) and ``app.consumer_generation_id`` the group
  generation; ``Consumer._new_consumer_thread`` builds the ``AIOKafkaConsumerThread`` whose ``_create_consumer``
  returns the aiokafka consumer before it starts, and aiokafka's ``AIOKafkaConsumer._fetch_max_wait_ms`` is what
  its ``start()`` gives the fetcher (:func:`fetch_handoff`);
- ``Producer._ensure_producer()``: the aiokafka producer the app's producer runs (:func:`kafka_producer`);
- ``Consumer._commit_offsets`` (positions the worker keeps itself, committed without Faust's acknowledgement
  tracking), ``on_buffer_drop`` and the ``_buffered_partitions``/``_paused_partitions`` sets (a partition left out
  of fetching after a full stream buffer).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP

from worker.runtime.handoff import Handoff

# what the per-partition tables tell Faust's recovery they hold already: it skips them (see SelfRecoveredTable)
RECOVERED_BY_WORKER = 2**62


class KeyRoutedTable(faust.Table):  # type: ignore[misc]
    """A table whose changelog partition is computed from the key by our own partitioner.

    Writes happen outside per-event iteration (batches, timers), so Faust cannot take the partition from the
    current event; and asking the producer's partitioner needs topic metadata it does not always hold. Routing by
    :func:`worker.routing.partition_for` is exact and agrees with how input records are routed.
    """

    route: Any = None

    def partition_for_key(self, key: Any) -> int:
        return int(self.route(key))


class SelfRecoveredTable(KeyRoutedTable):
    """A per-partition table the worker recovers itself, on gaining a partition (:mod:`worker.runtime.recovery`).

    Faust's recovery passes each changelog record through a queue, a timeout task and debug logging: about 2,400
    records/s here, seven minutes for a million users. Reporting every partition as persisted up to an offset
    no changelog reaches makes it skip them (the partitions stay paused in its consumer); the worker reads them
    with a plain consumer in large fetches instead.
    """

    def persisted_offset(self, tp: Any) -> int:
        return RECOVERED_BY_WORKER


class SinglePartitionGlobalTable(faust.GlobalTable):  # type: ignore[misc]
    def partition_for_key(self, key: Any) -> int:
        return 0


def kafka_producer(app: Any) -> AIOKafkaProducer:
    """The aiokafka producer under the app's Faust producer (started with it), for its batch API
    (:class:`worker.producing.BatchSender`)."""
    producer: AIOKafkaProducer = app.producer._ensure_producer()
    return producer


def new_producer(app: Any) -> AIOKafkaProducer:
    """A new aiokafka producer configured as the app's Faust producer is (servers, client id, acks, batching,
    compression, timeouts, credentials); bound to the running loop, not started."""
    producer: AIOKafkaProducer = app.producer._new_producer()
    return producer


def values(table: Any) -> dict[Any, bytes]:
    """Key → value of a table in memory: the memory store's dict. Every table here holds its values as the bytes
    its changelog has (user states in their wire form, decoded on access: :class:`worker.features.wire.EncodedStates`),
    so recovering a record copies bytes."""
    data: dict[Any, bytes] = table.data.data
    return data


def key_partitions(table: Any) -> dict[Any, int]:
    """Key → changelog partition of a table's keys: the memory store's own record (Faust drops the keys of revoked
    partitions with it after a recovery; the worker keeps it for every key it sets or recovers)."""
    where: dict[Any, int] = table.data._key_partition
    return where


def drop_partitions(table: Any, keep: Iterable[int]) -> None:
    """Forget every key of a table whose changelog partition is not in ``keep``."""
    kept = set(keep)
    data, where = values(table), key_partitions(table)
    for key in [k for k, p in where.items() if p not in kept]:
        data.pop(key, None)
        del where[key]


def direct_delivery(consumer_class: type) -> type:
    """The transport's consumer, handing each fetched message to the streams without a task race per message.

    Faust's fetch loop awaits ``wait_first(deliver(message), suspend_flow.wait())``: two tasks and an
    ``asyncio.wait`` per message, which capped a no-op Faust agent at about 3,800 events/s here (7,700 without).
    While the flow runs, delivering directly is the same outcome; when a rebalance has suspended it, Faust's own
    race decides, as before (the records it drops are read again: the offset gate, :mod:`worker.changes.gate`).
    """

    def _is_event_wait(coro: Any) -> bool:  # the fetch loop's race: (deliver, suspend_flow.wait())
        return getattr(coro, "__qualname__", "") == "Event.wait"

    class Consumer(consumer_class):  # type: ignore[misc,valid-type]
        async def wait_first(self, *coros: Any, timeout: Any = None) -> Any:
            if len(coros) == 2 and not self.suspend_flow.is_set() and _is_event_wait(coros[1]):
                coros[1].close()
                await coros[0]
                return None
            return await super().wait_first(*coros, timeout=timeout)

    return Consumer


def fetch_handoff(consumer_class: type, handoff: Handoff, fetch_max_wait_ms: int) -> type:
    """The transport's consumer, handing the consumed topics' records to the worker in whole fetches
    (:mod:`worker.runtime.handoff`); the other topics' records go on through Faust's streams. Its aiokafka consumer
    lets the broker hold a fetch ``fetch_max_wait_ms`` (Faust fixes 1,500 ms: a broker that answers a fetch only
    when the wait ends, as the embedded one does, added about 0.4 s to every event's latency)."""

    class Thread(AIOKafkaConsumerThread):  # type: ignore[misc]
        def _create_consumer(self, loop: Any) -> Any:
            consumer = super()._create_consumer(loop)
            consumer._fetch_max_wait_ms = fetch_max_wait_ms  # read by the consumer's start() for its fetcher
            return consumer

    class Consumer(consumer_class):  # type: ignore[misc,valid-type]
        def _new_consumer_thread(self) -> Any:
            return Thread(self, loop=self.loop, beacon=self.beacon)

        async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
            asked_at = time.monotonic()
            records, active_partitions = await super()._wait_next_records(timeout)
            if records:
                await handoff.take(records, generation(self.app), asked_at)
            return records, active_partitions

    return Consumer


def generation(app: Any) -> int:
    """The consumer group generation the app's consumer is in (it changes with every rebalance)."""
    current: int = app.consumer_generation_id
    return current


async def commit_offsets(consumer: Any, offsets: dict[TP, int]) -> None:
    """Commit these offsets to the group as they are (Faust's public commit takes only what its streams acked)."""
    await consumer._commit_offsets(offsets)


def fetching_state(consumer: Any, tp: TP) -> tuple[bool, bool]:
    """(left out of fetching for a full stream buffer, paused) of a partition in Faust's consumer."""
    return tp in getattr(consumer, "_buffered_partitions", ()), tp in getattr(consumer, "_paused_partitions", ())


def resume_fetching(consumer: Any, tp: TP) -> None:
    """Put a partition back into fetching. Faust takes one out while its stream buffer is full and puts it back
    when the buffer drains; a rebalance in between can lose the put-back for good."""
    consumer.on_buffer_drop(tp)
