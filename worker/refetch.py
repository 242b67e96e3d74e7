"""Reading a partition range straight from the broker, beside Faust's consumer.

The offset gate (:mod:`worker.changes.gate`) asks for records the group consumer did not deliver. One group-less
aiokafka consumer serves every read: assigned to one partition at a time, seeked, fetched until the range is
covered or a deadline passes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition


class RangeReader:
    def __init__(self, bootstrap_servers: str, isolation_level: str = "read_uncommitted", **config: Any) -> None:
        self._config = {
            "bootstrap_servers": bootstrap_servers,
            "enable_auto_commit": False,
            "group_id": None,
            "isolation_level": isolation_level,
            "fetch_max_wait_ms": 100,
            **config,
        }
        self._consumer: AIOKafkaConsumer | None = None

    async def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(**self._config)
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def beginning(self, topic: str, partitions: Sequence[int]) -> dict[int, int]:
        """The first offset still in the log of each partition."""
        consumer = await self._started()
        tps = [TopicPartition(topic, p) for p in partitions]
        return {tp.partition: offset for tp, offset in (await consumer.beginning_offsets(tps)).items()}

    async def ends(self, topic: str, partitions: Sequence[int], timeout: float = 5.0) -> dict[int, int]:
        """The offset after each partition's last record. The end offset a broker reports may be the start of the
        last batch plus one (the embedded broker's); a fetch response's high watermark is exact, so each partition
        with records is fetched once from its reported end (as :func:`worker.kafkaio.true_end_offsets` does)."""
        consumer = await self._started()
        reported = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        ends = {tp.partition: end for tp, end in reported.items()}
        pending = {tp for tp, end in reported.items() if end > 0}
        consumer.assign(sorted(pending))
        for tp in pending:
            consumer.seek(tp, reported[tp] - 1)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            await consumer.getmany(*pending, timeout_ms=200)  # each fetch response carries the high watermark
            for tp in list(pending):
                if (highwater := consumer.highwater(tp)) is not None:
                    ends[tp.partition] = max(ends[tp.partition], highwater)
                    pending.discard(tp)
        return ends

    async def read(
        self, topic: str, partition: int, start: int, stop: int | None, timeout: float = 5.0, max_records: int = 5000
    ) -> tuple[list[Any], int]:
        """Records of ``topic``/``partition`` from offset ``start``: up to ``stop`` (exclusive) or, with no stop,
        whatever one fetch returns. Also returns the position reached: every offset from ``start`` up to it has
        been read, so one missing among the records does not exist on the broker."""
        consumer = await self._started()
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, start)
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while True:
            fetched = await consumer.getmany(tp, timeout_ms=200, max_records=max_records - len(out))
            out.extend(fetched.get(tp, ()))
            position = await consumer.position(tp)
            if stop is None or position >= stop or len(out) >= max_records or time.monotonic() > deadline:
                return out, position

    async def read_to_end(self, topic: str, partition: int, start: int = 0) -> list[Any]:
        """Every record of a partition from ``start`` to its end: past the end offset the broker reports (which
        may be the start of the last batch), then until a fetch comes back empty."""
        consumer = await self._started()
        tp = TopicPartition(topic, partition)
        end = (await consumer.end_offsets([tp]))[tp]
        out: list[Any] = []
        position = start
        while True:
            records, reached = await self.read(topic, partition, position, None, timeout=1.0)
            out.extend(r for r in records if r.offset >= position)
            if not records and reached >= end:
                return out
            position = reached

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
