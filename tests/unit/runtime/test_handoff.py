"""The hand-off of whole fetches: the consumed topics leave the fetch Faust iterates, in order, by generation."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any, NamedTuple

from faust.types import TP

from worker.runtime.handoff import Handoff
from worker.runtime.records import BY_USER, H_KIND, H_SRC_OFFSET, H_SRC_PARTITION, INPUT


class Rec(NamedTuple):  # the fields of an aiokafka ConsumerRecord the hand-off reads
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Any


def recs(partition: int, start: int, count: int) -> list[Rec]:
    return [Rec(partition, o, b"k", b"v%d" % o, ()) for o in range(start, start + count)]


def handoff(max_fetches: int = 8) -> Handoff:
    return Handoff({INPUT: "events", BY_USER: "app-by-user"}, partitions=2, max_fetches=max_fetches)


def test_consumed_topics_leave_the_fetch_and_the_rest_stays_for_faust() -> None:
    h = handoff()
    fetch: dict[Any, list[Any]] = {
        TP("events", 0): recs(0, 0, 3),
        TP("app-training-samples", 0): recs(0, 0, 1),
        TP("app-by-user", 1): recs(1, 5, 2),
    }

    async def scenario() -> dict[str, Any]:
        await h.take(fetch, generation=7)
        fetched = await h.next(max_records=100, window=0.0)
        return h.batches(fetched, 7, now=1.5, stale=lambda *_: None)

    batches = asyncio.run(scenario())
    assert list(fetch) == [TP("app-training-samples", 0)]  # what Faust's getmany iterates afterwards
    assert [(r.partition, r.offset, r.value) for r in batches[INPUT]] == [(0, 0, b"v0"), (0, 1, b"v1"), (0, 2, b"v2")]
    # a re-routed record without our headers is fenced on the re-routing topic's coordinates, as from Faust
    assert [(r.partition, r.offset, r.src_partition, r.consumed_at) for r in batches[BY_USER]] == [
        (1, 5, 3, 1.5),
        (1, 6, 3, 1.5),
    ]


def test_headers_of_a_rerouted_erasure_survive_the_handoff() -> None:
    h = handoff()
    headers = [(H_SRC_PARTITION, b"1"), (H_SRC_OFFSET, b"42"), (H_KIND, b"erasure")]
    fetch: dict[Any, list[Any]] = {TP("app-by-user", 0): [Rec(0, 9, b"u", b"{}", headers)]}

    async def scenario() -> Any:
        await h.take(fetch, generation=1)
        return h.batches(await h.next(10, 0.0), 1, 0.0, lambda *_: None)

    (rec,) = asyncio.run(scenario())[BY_USER]
    assert (rec.src_partition, rec.src_offset, rec.kind) == (1, 42, "erasure")


def test_fetches_of_an_older_generation_are_dropped_and_counted() -> None:
    h = handoff()
    stale: Counter[str] = Counter()

    async def scenario() -> Any:
        await h.take({TP("events", 0): recs(0, 0, 4)}, generation=1)
        await h.take({TP("events", 1): recs(1, 0, 2)}, generation=2)
        return h.batches(await h.next(100, 0.0), 2, 0.0, lambda stream, n: stale.update({stream: n}))

    batches = asyncio.run(scenario())
    assert [(r.partition, r.offset) for r in batches[INPUT]] == [(1, 0), (1, 1)]
    assert stale == {INPUT: 4}


def test_next_gathers_fetches_up_to_the_batch_size_within_the_window() -> None:
    h = handoff()

    async def scenario() -> list[int]:
        for i in range(4):
            await h.take({TP("events", 0): recs(0, 10 * i, 10)}, generation=0)
        first = await h.next(max_records=15, window=0.0)  # two fetches reach 15
        rest = await h.next(max_records=100, window=0.0)  # the other two, none waited for
        late = asyncio.get_running_loop().call_later(0.05, lambda: h.queue.put_nowait((0.0, [])))
        waited = await h.next(max_records=100, window=0.0)  # an empty queue: waits for the first fetch
        late.cancel()
        return [len(first), len(rest), len(waited)]

    assert asyncio.run(scenario()) == [2, 2, 0]


def test_the_window_counts_from_when_the_first_fetch_was_asked_for() -> None:
    """The window bounds how long a record waits to be batched: a fetch asked for before the last batch ran (and
    queued only when it ended, as Faust's fetch loop shares the app's loop) goes at once; one just asked for waits
    for more."""
    h = handoff()

    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        second = {TP("events", 0): recs(0, 10, 10)}
        await h.take({TP("events", 0): recs(0, 0, 10)}, generation=0, asked_at=time.monotonic())
        fresh = loop.call_later(0.02, lambda: asyncio.ensure_future(h.take(dict(second), generation=0)))
        together = await h.next(max_records=100, window=0.5)  # the second comes within the window: one batch
        await h.take({TP("events", 0): recs(0, 20, 10)}, generation=0, asked_at=time.monotonic() - 0.1)
        late = loop.call_later(0.02, lambda: asyncio.ensure_future(h.take(dict(second), generation=0)))
        alone = await h.next(max_records=100, window=0.05)  # asked for 0.1 s ago: the window is over
        fresh.cancel()
        late.cancel()
        return [len(together), len(alone)]

    assert asyncio.run(scenario()) == [2, 1]


def test_a_batch_takes_the_fetch_handed_over_right_after_its_first() -> None:
    """The fetch the consumer asked for when it queued the first is one loop iteration away: a batch waits that long
    for it (up to ``SETTLE``), even past its window."""
    h = handoff()

    async def scenario() -> list[int]:
        loop = asyncio.get_running_loop()
        await h.take({TP("events", 0): recs(0, 0, 10)}, generation=0, asked_at=time.monotonic() - 1.0)
        loop.call_soon(lambda: asyncio.ensure_future(h.take({TP("events", 1): recs(1, 0, 5)}, generation=0)))
        return [len(f.records) for f in await h.next(max_records=100, window=0.0)]

    assert asyncio.run(scenario()) == [10, 5]


def test_a_full_queue_holds_the_fetcher_until_the_pipeline_takes_one() -> None:
    h = handoff(max_fetches=1)

    async def scenario() -> tuple[bool, bool]:
        await h.take({TP("events", 0): recs(0, 0, 1)}, generation=0)
        second = asyncio.create_task(h.take({TP("events", 0): recs(0, 1, 1)}, generation=0))
        await asyncio.sleep(0.01)
        held = not second.done()
        await h.next(10, 0.0)
        await asyncio.wait_for(second, 1.0)
        return held, second.done()

    assert asyncio.run(scenario()) == (True, True)


def test_revocation_clears_what_was_queued() -> None:
    h = handoff()

    async def scenario() -> dict[str, int]:
        await h.take({TP("events", 0): recs(0, 0, 3), TP("events", 1): recs(1, 0, 2)}, generation=0)
        await h.take({TP("app-by-user", 0): recs(0, 0, 4)}, generation=0)
        return dict(h.clear())

    assert asyncio.run(scenario()) == {INPUT: 5, BY_USER: 4}  # counted as held, per stream
    assert h.queue.empty()
