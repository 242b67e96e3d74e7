"""The cyclic garbage collector, set for a process that holds many long-lived objects and makes many short-lived
ones.

CPython's defaults suit neither. A young collection every 700 new containers (a few dozen events here) promotes
everything a batch still holds (its records, the outbox's queued writes) to the oldest generation within
milliseconds, and the oldest generation is collected in full whenever it has grown by a quarter: measured in the
throughput bench's latency run, a full collection every 5-10 s, 120-220 ms each (the event loop stalls meanwhile),
finding fewer than 250 objects. With young collections every 50,000 containers a batch's objects are freed by
reference counting before they are promoted, and what the imports and the app's construction made (about 100,000
objects that live as long as the process) is moved out of every collection at start-up. In the same run after
that: no full collection from the first batch to the last.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator

YOUNG_THRESHOLD = 50_000  # new containers between young collections (CPython: 700)


def settle_after_start() -> None:
    """Once the app is built: what exists now lives as long as the process, out of every later collection; young
    collections less often (:data:`YOUNG_THRESHOLD`)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


@contextlib.contextmanager
def gc_paused(large: Callable[[], bool]) -> Iterator[None]:
    """The cyclic collector off while millions of long-lived objects arrive (it would rescan all of them on every
    full collection: pauses of seconds that stall the event loop). After a ``large`` read, one collection, then
    everything alive goes to the permanent generation (reference counting still frees them)."""
    gc.disable()
    try:
        yield
    finally:
        if large():
            gc.collect()
            gc.freeze()
        gc.enable()
