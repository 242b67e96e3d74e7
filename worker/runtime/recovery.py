"""Reading a table's changelog into memory, to the real end: what a worker does on gaining partitions.

The per-partition tables are recovered here in full (:class:`~worker.runtime.faust_internals.SelfRecoveredTable`):
from the local copy (:mod:`worker.localstore`) and the changelog after it when the worker keeps one, else all of
each changelog partition. The model table is recovered by Faust, which stops at the broker's reported end offset;
a broker that reports the start of the last record batch instead (the embedded Tansu broker does) would make a
restart miss the newest model, so its tail is read again here, to the real end.

"The real end": past the end offset the broker reports (a whole batch comes with each fetch, so a broker
reporting the start of the last batch is covered), then until a fetch comes back empty. A local copy is used only
if the changelog still holds the record the copy ends at, unchanged (the copy is a prefix of this log); otherwise
the partition is read in full.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition

from worker import codec
from worker.localstore import LocalStore, Marker, digest
from worker.runtime import faust_internals as fi
from worker.runtime.collector import gc_paused

log = logging.getLogger("worker")

# empty fetches (of 0.2 s) after which the record a local copy ends at counts as missing from the changelog (the
# broker may report an end offset before it, so only a fetch can tell; a false "missing" costs a full read)
VERIFY_IDLE = 5
FREEZE_AFTER = 100_000  # records read at once beyond which the cyclic collector leaves them alone (gc_paused)


def changelog_key_decoder(app: faust.App, table: Any) -> Callable[[bytes], Any]:
    """The key decoder of a table's changelog records: the direct one for JSON string keys (half the cost of Faust's
    serializer registry, which counts at a million records), Faust's for any other."""
    if _json_str_keys(app, table):
        return codec.loads
    key_ser = table.key_serializer or app.conf.key_serializer
    return functools.partial(app.serializers.loads_key, table.key_type, serializer=key_ser)


def changelog_key_encoder(app: faust.App, table: Any) -> Callable[[Any], bytes]:
    """The key encoder of a table's changelog records: for JSON string keys the same bytes as Faust's (whose json
    codec is orjson too) at a tenth of the cost, per user state written; Faust's for any other."""
    if _json_str_keys(app, table):
        return codec.dumps
    key_ser = table.key_serializer or app.conf.key_serializer
    return functools.partial(app.serializers.dumps_key, table.key_type, serializer=key_ser)


def _json_str_keys(app: faust.App, table: Any) -> bool:
    return bool((table.key_serializer or app.conf.key_serializer) == "json" and table.key_type is str)


class ChangelogReader:
    """Reads tables' changelog partitions into memory (a fresh group-less consumer per read)."""

    def __init__(
        self,
        app: faust.App,
        bootstrap: str,
        isolation: str,
        local: LocalStore | None = None,
        kept_locally: frozenset[str] = frozenset(),
        consumer: Callable[..., Any] = AIOKafkaConsumer,
        **auth: Any,
    ) -> None:
        """``local`` holds a copy of the tables named in ``kept_locally``; ``consumer`` makes the consumer (a fake
        in tests)."""
        self.app = app
        self.local = local
        self.kept_locally = kept_locally
        self._consumer = consumer
        self._config = {
            "bootstrap_servers": bootstrap,
            "enable_auto_commit": False,
            "group_id": None,
            "isolation_level": isolation,
            "max_partition_fetch_bytes": 16 * 2**20,
            "fetch_max_bytes": 64 * 2**20,
            **auth,
        }

    async def read(self, table: Any, partitions: set[int], tail: int | None = None) -> tuple[int, int]:
        """Bring a table's partitions in memory up to the end of its changelog (the last record per key wins), or
        its last ``tail`` records. Returns (records from the local copy, records from the changelog)."""
        if not partitions:
            return 0, 0
        keep = self.local if table.name in self.kept_locally else None
        job = _Read(table, keep, changelog_key_decoder(self.app, table))
        consumer = self._consumer(**self._config)
        await consumer.start()
        try:
            with gc_paused(lambda: job.total >= FREEZE_AFTER):
                await job.run(consumer, sorted(partitions), tail)
        finally:
            await consumer.stop()
        return job.local_records, job.applied


class _Read:
    """One read of one table's partitions: where each starts, what is verified, what was applied."""

    def __init__(self, table: Any, keep: LocalStore | None, loads_key: Callable[[bytes], Any]) -> None:
        self.table, self.keep, self.loads_key = table, keep, loads_key
        self.data, self.where = fi.values(table), fi.key_partitions(table)
        self.topic: str = table.changelog_topic.get_topic_name()
        self.from_local: dict[int, int] = {}
        self.applied = 0
        self.starts: dict[TopicPartition, int] = {}
        self.pending: set[TopicPartition] = set()  # not yet read up to the reported end
        self.verify: dict[TopicPartition, Marker] = {}  # read from a local copy: the record it ends at

    @property
    def local_records(self) -> int:
        return sum(self.from_local.values())

    @property
    def total(self) -> int:
        return self.applied + self.local_records

    async def run(self, consumer: AIOKafkaConsumer, partitions: list[int], tail: int | None) -> None:
        tps = [TopicPartition(self.topic, p) for p in partitions]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        self.starts = await consumer.beginning_offsets(tps)
        self.pending = {tp for tp in tps if ends[tp] > self.starts[tp]}
        for tp in tps:
            self._seek(consumer, tp, ends[tp], tail)
        await self._to_real_end(consumer, tps, ends)

    def _seek(self, consumer: AIOKafkaConsumer, tp: TopicPartition, end: int, tail: int | None) -> None:
        """Where a partition's read starts: after its local copy (from the record the copy ends at, to verify it),
        or at the start of the log (or its tail)."""
        start = self.starts[tp]
        marker = self.keep.marker(self.table.name, tp.partition) if self.keep is not None else None
        if marker is None:
            consumer.seek(tp, start if tail is None else max(start, end - tail))
        elif start < marker.next_offset:
            self.from_local[tp.partition] = self._load_local(tp.partition)
            self.verify[tp] = marker
            consumer.seek(tp, marker.next_offset - 1)
            self.pending.add(tp)
        else:
            self._discard_local(consumer, tp, f"the changelog starts at {start}, after the copy's end")

    def _load_local(self, partition: int) -> int:
        assert self.keep is not None
        count = 0
        for k, v in self.keep.items(self.table.name, partition):
            key = self.loads_key(k)
            self.data[key] = v
            self.where[key] = partition
            count += 1
        return count

    def _discard_local(self, consumer: AIOKafkaConsumer, tp: TopicPartition, why: str) -> None:
        assert self.keep is not None
        log.warning(
            "%s partition %d: local copy discarded (%s); reading the changelog in full",
            self.table.name,
            tp.partition,
            why,
        )
        for key in [k for k, p in self.where.items() if p == tp.partition]:
            self.data.pop(key, None)
            del self.where[key]
        self.keep.forget(self.table.name, tp.partition)
        self.from_local.pop(tp.partition, None)
        self.verify.pop(tp, None)
        consumer.seek(tp, self.starts[tp])
        self.pending.add(tp)

    async def _to_real_end(
        self, consumer: AIOKafkaConsumer, tps: list[TopicPartition], ends: dict[TopicPartition, int]
    ) -> None:
        idle = 0
        while True:
            batches = await consumer.getmany(*tps, timeout_ms=200, max_records=20_000)
            idle = 0 if batches else idle + 1
            for tp, records in batches.items():
                self._apply(consumer, tp, records)
            for tp in list(self.pending):
                if await consumer.position(tp) >= ends[tp]:
                    self.pending.discard(tp)
            if not self.pending and idle >= 1 and not self.verify:
                return
            if not self.pending and idle >= VERIFY_IDLE:  # nothing at a copy's last offset: the changelog is shorter
                for tp in list(self.verify):
                    self._discard_local(
                        consumer, tp, f"the changelog ends before offset {self.verify[tp].next_offset - 1}"
                    )
                idle = 0

    def _apply(self, consumer: AIOKafkaConsumer, tp: TopicPartition, records: list[Any]) -> None:
        marker = self.verify.pop(tp, None)
        if marker is not None and (
            records[0].offset != marker.next_offset - 1 or digest(records[0].key, records[0].value) != marker.digest
        ):
            self._discard_local(consumer, tp, f"offset {marker.next_offset - 1} of the changelog is another record")
            return
        for r in records:
            key = self.loads_key(r.key)
            if r.value is None:
                self.data.pop(key, None)
                self.where.pop(key, None)
            else:
                self.data[key] = r.value
                self.where[key] = r.partition
        self.applied += len(records)
        if self.keep is not None:
            self.keep.write((self.table.name, r.partition, r.offset, r.key, r.value) for r in records)
