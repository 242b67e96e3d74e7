"""The outbox on a thread of its own: the app's loop hands batches over, the thread delivers them in order."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from worker.producing import Record
from worker.runtime.delivery import OutboxThread


def rec(topic: str, value: str) -> Record:
    return (topic, None, value.encode(), 0, None)


class ThreadSender:
    """Delivers at once (or fails on a value), noting each send and the thread it came from."""

    def __init__(self, fail_on: bytes | None = None) -> None:
        self.fail_on = fail_on
        self.sends: list[tuple[int, float, list[bytes]]] = []  # (thread, monotonic time, values)
        self.started = self.stopped = False
        self.gate = threading.Event()  # sends wait for it
        self.gate.set()

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def __call__(self, records: Sequence[Record]) -> list[int]:
        while not self.gate.is_set():
            await asyncio.sleep(0.001)
        values = [r[2] or b"" for r in records]
        self.sends.append((threading.get_ident(), time.monotonic(), values))
        if self.fail_on in values:
            raise OSError("broker went away")
        return list(range(len(records)))

    @property
    def delivered(self) -> list[bytes]:
        return [v for _, _, values in self.sends for v in values]


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_batches_go_out_in_order_from_the_thread_and_callbacks_run_in_the_apps_loop() -> None:
    async def scenario() -> tuple[ThreadSender, list[tuple[str, int]], list[int], int]:
        sender = ThreadSender()
        stored: list[int] = []
        box = OutboxThread(sender, on_stored=lambda pairs: stored.append(threading.get_ident()))
        calls: list[tuple[str, int]] = []
        for name in ("a", "b", "c"):
            await box.add(
                [rec("out", name)],
                [(f"u-{name}", rec("state", f"s-{name}"))],
                [(name, rec("pos", f"p-{name}"))],
                after_outputs=lambda n=name: calls.append((f"out {n}", threading.get_ident())),
                after_all=lambda n=name: calls.append((n, threading.get_ident())),
            )
        await box.drain()
        pending = box.pending
        task = asyncio.create_task(box.run())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return sender, calls, stored, pending

    sender, calls, stored, pending = run(scenario())
    here = threading.get_ident()
    assert {thread for thread, _, _ in sender.sends} != {here}  # sent from the outbox's thread
    delivered = sender.delivered
    for name in ("a", "b", "c"):  # each batch's output, then its state, then its position
        assert (
            delivered.index(name.encode())
            < delivered.index(f"s-{name}".encode())
            < delivered.index(f"p-{name}".encode())
        )
    assert [v for v in delivered if len(v) == 1] == [b"a", b"b", b"c"]
    # every callback ran in the app's loop, each batch's "after all" after its outputs', before drain returned
    assert {thread for _, thread in calls} == {here} and set(stored) == {here}
    names = [name for name, _ in calls]
    assert [n for n in names if not n.startswith("out")] == ["a", "b", "c"]
    assert all(names.index(f"out {n}") < names.index(n) for n in ("a", "b", "c"))
    assert pending == 0
    assert sender.started and sender.stopped  # the run's cancellation stopped the thread's sender


def test_deliveries_go_on_while_the_apps_loop_is_busy() -> None:
    """A batch of events holds the app's loop for tens of milliseconds; the outbox's round trips must not wait for
    it (in the app's loop each one did: a change waited for two or three batches)."""

    async def scenario() -> tuple[ThreadSender, float, float]:
        sender = ThreadSender()
        box = OutboxThread(sender)
        await box.add([rec("out", "warm")])
        await box.drain()  # the thread runs
        busy_from = time.monotonic()  # add hands the batch over without a turn of the app's loop
        await box.add([rec("out", "c1")], [("u1", rec("state", "s1"))], [(0, rec("pos", "p1"))])
        # a long batch: the app's loop takes no turn until the three round trips are done (or 10 s, on a machine
        # busy with other tests: an outbox that needed the app's loop makes none of them meanwhile)
        deadline = busy_from + 10.0
        while len(sender.sends) < 4 and time.monotonic() < deadline:  # the warm-up's send and these three
            time.sleep(0.01)
        busy_until = time.monotonic()
        await box.drain()
        return sender, busy_from, busy_until

    sender, busy_from, busy_until = run(scenario())
    sends = [(at, values) for _, at, values in sender.sends if values != [b"warm"]]
    assert [values for _, values in sends] == [[b"c1"], [b"s1"], [b"p1"]]
    assert all(busy_from <= at < busy_until for at, _ in sends)  # all three round trips during the busy loop


def test_a_failed_delivery_is_raised_by_run_add_and_drain() -> None:
    async def scenario() -> list[str]:
        box = OutboxThread(ThreadSender(fail_on=b"bad"))
        task = asyncio.create_task(box.run())
        await box.add([rec("out", "bad")])
        raised = []
        with pytest.raises(OSError):
            await task
        raised.append("run")
        with pytest.raises(RuntimeError, match="a delivery failed"):
            await box.drain()
        raised.append("drain")
        with pytest.raises(RuntimeError, match="a delivery failed"):
            await box.add([rec("out", "later")])
        raised.append("add")
        return raised

    assert run(scenario()) == ["run", "drain", "add"]


def test_add_waits_while_too_much_is_undelivered() -> None:
    async def scenario() -> tuple[bool, bool, list[bytes]]:
        sender = ThreadSender()
        box = OutboxThread(sender, max_pending=3)
        await box.drain()
        sender.gate.clear()  # the broker stops answering
        await box.add([rec("out", "1"), rec("out", "2"), rec("out", "3")])
        fourth = asyncio.create_task(box.add([rec("out", "4")]))
        await asyncio.sleep(0.1)
        waited = not fourth.done()
        sender.gate.set()
        await fourth
        await box.drain()
        return waited, fourth.done(), sender.delivered

    waited, added, delivered = run(scenario())
    assert waited and added
    assert delivered == [b"1", b"2", b"3", b"4"]
