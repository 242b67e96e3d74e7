"""Whole fetches of the consumed topics, from Faust's fetcher to the pipeline, past Faust's per-message layer.

Faust turns every fetched record into a message, an event and a trip through its conductor and stream iterator
(ten coroutines and a forced loop iteration per record). The worker needs none of that for the topics it consumes
in batches: the consumer (:func:`worker.runtime.faust_internals.fetch_handoff`) takes their records out of each
fetch and :meth:`Handoff.take` queues them here, tagged with the group generation they were fetched in; the
feeder (:meth:`Handoff.next`) hands them to the pipeline a batch at a time. Faust still does the rest: membership
and assignment, seeking, the samples topic and the tables' changelogs.

The queue is bounded (a full one holds the fetcher: backpressure). A batch fetched in an older generation is
dropped, as is everything queued when partitions are revoked: the offset gate reads again what it then misses
(:mod:`worker.changes.gate`), so a dropped fetch costs a read, never a record.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from worker.changes import InputRecord
from worker.runtime.records import input_records

SETTLE = 0.005  # seconds a batch waits for the fetch in flight when the one it starts with was queued (Handoff.next)


@dataclass(slots=True)
class Fetched:
    """The records of one partition from one fetch."""

    generation: int
    stream: str
    partition: int
    records: list[Any]  # aiokafka ConsumerRecords (offset, key, value, headers)


class Handoff:
    def __init__(self, streams: Mapping[str, str], partitions: int, max_fetches: int = 8) -> None:
        """``streams``: consumed stream name → its topic; ``max_fetches``: fetches queued before the fetcher waits."""
        self.stream_of = {topic: stream for stream, topic in streams.items()}
        self.partitions = partitions
        self.queue: asyncio.Queue[tuple[float, list[Fetched]]] = asyncio.Queue(max_fetches)  # (asked at, what)

    async def take(self, records: dict[Any, list[Any]], generation: int, asked_at: float | None = None) -> None:
        """Take the consumed topics' partitions out of a fetch (what stays goes on through Faust). ``asked_at``:
        when the app asked its consumer for these records (``time.monotonic()``; None: now)."""
        mine = [tp for tp in records if tp.topic in self.stream_of]
        if mine:
            fetched = [Fetched(generation, self.stream_of[tp.topic], tp.partition, records.pop(tp)) for tp in mine]
            await self.queue.put((time.monotonic() if asked_at is None else asked_at, fetched))

    def clear(self) -> Counter[str]:
        """Drop every queued fetch (partitions are being revoked); returns how many records were dropped, per
        stream."""
        dropped: Counter[str] = Counter()
        while not self.queue.empty():
            for f in self.queue.get_nowait()[1]:
                dropped[f.stream] += len(f.records)
        return dropped

    async def next(self, max_records: int, window: float) -> list[Fetched]:
        """The next fetches: at least one, then more while the records stay under ``max_records`` and they come
        within ``window`` seconds of when the first one was asked for.

        Counted from the ask, not from the queueing: Faust's fetch loop runs in the app's loop, so a fetch asked for
        as a batch starts is queued only when that batch ends. Counted from then, every batch after a busy one
        waited out a whole window with its records in hand (50 ms a batch in a trace at 8,000 events/s); counted
        from the ask, a fetch that waited out a batch goes at once, and only an idle pipeline waits for more.

        At least :data:`SETTLE` is given to the fetch the consumer asked for when it queued the first: its records
        arrived while the last batch ran and are in the consumer's thread already, one loop iteration away; without
        the wait they waited for the end of the batch about to start (an event waited two batches instead of one)."""
        asked_at, fetched = await self.queue.get()
        count = sum(len(f.records) for f in fetched)
        deadline = max(asked_at + window, time.monotonic() + SETTLE)
        while count < max_records:
            more = self.queue.get_nowait()[1] if not self.queue.empty() else await self._within(deadline)
            if more is None:
                break
            fetched += more
            count += sum(len(f.records) for f in more)
        return fetched

    async def _within(self, deadline: float) -> list[Fetched] | None:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            return (await asyncio.wait_for(self.queue.get(), left))[1]
        except TimeoutError:
            return None

    def batches(
        self, fetched: list[Fetched], current: int, now: float, stale: Callable[[str, int], None]
    ) -> dict[str, list[InputRecord]]:
        """The fetches as one batch per stream, in fetch order; those of another generation than ``current`` are
        dropped (``stale`` counts them per stream)."""
        out: dict[str, list[InputRecord]] = {}
        n = self.partitions
        for f in fetched:
            if f.generation != current:
                stale(f.stream, len(f.records))
                continue
            out.setdefault(f.stream, []).extend(input_records(f.stream, f.records, n, now))
        return out
