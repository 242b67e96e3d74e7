"""Group commit of a batch's writes, in the order crash safety needs, while the next batches are computed.

A batch writes three kinds of records, each kind delivered before the next is sent (see ``Pipeline.publish`` in
:mod:`worker.runtime.pipeline`): its **outputs** (segment changes, re-routed events, dead letters), then the
**states** of the users it touched (each holds the offset fence that drops re-deliveries, so it must not land
before the changes it caused), then the **positions** of the partitions it consumed (which must not land before
the states they cover). The pipeline hands over the states of users without an output, and the positions, once
per interval rather than with every batch (:mod:`worker.runtime.statewrites`); the order holds all the same.

Waiting for three broker round trips per batch made them the worker's ceiling. The outbox lets the core go on:
a batch's records are added as bytes snapshotted at the end of the batch, and the delivery loop sends whatever has
accumulated as one round: all its outputs, then all its states (the newest per key), then all its positions. Every
state in a round is as of some batch whose outputs are in that round or an earlier one, and every position is as of
the round's last batch, so the order above holds for the round as a whole. Rounds overlap by one kind: a round's
outputs go out while the round before it delivers its states and positions (its changes need not wait for another
round's bookkeeping, which an event's latency would otherwise carry). Under load a round's positions also share
one send with the next round's states, once both the round's states and the next round's outputs are delivered:
two round trips per round instead of three. That keeps every guarantee: states and positions of consecutive
rounds still go out one round after the other (a key's newer state never lands first, a round's positions only
after its states), and outputs landing before an earlier round's states are re-emitted byte for byte after a
crash, as any delivered output whose state did not land. A send that lands in part breaks no order either: the
positions in it cover states already delivered, and the states in it need only outputs already delivered.
A round's callbacks run after it is delivered (positions become committable; latency is observed after its
outputs), and ``on_stored`` gets the round's states and positions with what the broker answered for each (the
local state store keeps what the changelog holds).

Pure asyncio around a ``send_all`` coroutine; no Faust. The worker runs it on a thread of its own with a producer of
its own (:class:`worker.runtime.delivery.OutboxThread`, :class:`worker.producing.ProducerSender`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from worker.producing import Record

# sends the records and returns each one's answer from the broker, in order, once every one is delivered
SendAll = Callable[[list[Record]], Awaitable[Sequence[Any]]]


@dataclass(slots=True)
class _Round:
    outputs: list[Record] = field(default_factory=list)
    states: dict[Any, Record] = field(default_factory=dict)
    positions: dict[Any, Record] = field(default_factory=dict)
    after_outputs: list[Callable[[], None]] = field(default_factory=list)
    after_all: list[Callable[[], None]] = field(default_factory=list)
    sealed: bool = False  # records added later go out only once this round is wholly delivered

    def __len__(self) -> int:
        return len(self.outputs) + len(self.states) + len(self.positions)

    @property
    def empty(self) -> bool:
        return not (
            self.outputs or self.states or self.positions or self.after_outputs or self.after_all or self.sealed
        )


class Outbox:
    def __init__(
        self,
        send_all: SendAll,
        max_pending: int = 50_000,
        on_round: Callable[[float, int], None] | None = None,
        on_stored: Callable[[list[tuple[Record, Any]]], None] | None = None,
    ) -> None:
        self._send_all = send_all
        self._max_pending = max_pending
        self._on_round = on_round  # (seconds, records) of each delivered round
        self._on_stored = on_stored  # (record, the send's result) of each delivered state and position
        self._rounds: deque[_Round] = deque([_Round()])  # to deliver, oldest first; the last one takes records
        self._in_flight = 0  # rounds taken and not yet wholly delivered
        self._changed = asyncio.Condition()
        self._error: BaseException | None = None
        self._sending_outputs = False  # a round's outputs are on their way to the states-and-positions loop
        self.rounds = 0  # delivered rounds (for metrics and tests)

    @property
    def pending(self) -> int:
        return sum(len(r) for r in self._rounds)

    async def add(
        self,
        outputs: Iterable[Record] = (),
        states: Iterable[tuple[Any, Record]] = (),
        positions: Iterable[tuple[Any, Record]] = (),
        after_outputs: Callable[[], None] | None = None,
        after_all: Callable[[], None] | None = None,
        seal: bool = False,
    ) -> None:
        """Queue one batch's records; waits only while too much is queued (back-pressure). ``seal``: records
        added later go out only once these are delivered (a barrier: e.g. the record of a newly adopted model)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._error is not None or self.pending < self._max_pending)
            self._raise()
            if self._rounds[-1].sealed:
                self._rounds.append(_Round())
            r = self._rounds[-1]
            r.outputs.extend(outputs)
            r.states.update(states)
            r.positions.update(positions)
            if after_outputs is not None:
                r.after_outputs.append(after_outputs)
            if after_all is not None:
                r.after_all.append(after_all)
            r.sealed = seal
            self._changed.notify_all()

    async def drain(self) -> None:
        """Wait until everything added so far is delivered (raises the delivery loop's error, if it failed)."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: self._error is not None or (not self._in_flight and self._rounds[0].empty)
            )
            self._raise()

    async def run(self) -> None:
        """The delivery loop; runs until cancelled, or raises the first send error (after waking the waiters)."""
        delivered: asyncio.Queue[tuple[_Round, float]] = asyncio.Queue(maxsize=1)
        loops = [
            asyncio.ensure_future(self._send_outputs(delivered)),
            asyncio.ensure_future(self._send_rest(delivered)),
        ]
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_EXCEPTION)
            for loop in done:
                loop.result()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            async with self._changed:
                self._error = exc
                self._changed.notify_all()
            raise
        finally:
            for loop in loops:
                loop.cancel()

    async def _send_outputs(self, delivered: asyncio.Queue[tuple[_Round, float]]) -> None:
        """Each round's outputs; the round then waits for the one before it to deliver its states and positions."""
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: not self._rounds[0].empty)
                r = self._rounds.popleft()
                if not self._rounds:
                    self._rounds.append(_Round())
                self._in_flight += 1
                self._changed.notify_all()  # room for the producers of the next round
            started = time.monotonic()
            self._sending_outputs = True  # the round before may hold its positions back to send them with its states
            try:
                await self._deliver(r.outputs)
                for callback in r.after_outputs:
                    callback()
                await delivered.put((r, started))
            finally:
                self._sending_outputs = False
            if r.sealed:  # the next round's outputs wait until this one is wholly delivered
                async with self._changed:
                    await self._changed.wait_for(lambda: not self._in_flight)

    async def _send_rest(self, delivered: asyncio.Queue[tuple[_Round, float]]) -> None:
        """Each round's states, then its positions, a round at a time. A round's positions share one send with the
        next round's states when that round's outputs are delivered or on their way: one round trip fewer per
        round under load, and every order still holds (the positions' states and the states' outputs are
        delivered first, and a key's states of consecutive rounds go out one send after the other)."""
        r, started = await delivered.get()
        stored = await self._deliver(r.states.values())
        while True:
            if delivered.empty() and not self._sending_outputs:  # nothing to pair with: the positions go alone
                await self._finish(r, started, stored + await self._deliver(r.positions.values()))
                r, started = await delivered.get()
                stored = await self._deliver(r.states.values())
                continue
            after, after_started = await delivered.get()
            both = await self._deliver([*r.positions.values(), *after.states.values()])
            await self._finish(r, started, stored + both[: len(r.positions)])
            r, started, stored = after, after_started, both[len(r.positions) :]

    async def _finish(self, r: _Round, started: float, stored: list[tuple[Record, Any]]) -> None:
        """A round wholly delivered: its callbacks, then room for the next."""
        if self._on_stored is not None and stored:
            self._on_stored(stored)
        for callback in r.after_all:
            callback()
        self.rounds += 1
        if self._on_round is not None:
            self._on_round(time.monotonic() - started, len(r))
        async with self._changed:
            self._in_flight -= 1
            self._changed.notify_all()

    async def _deliver(self, records: Iterable[Record]) -> list[tuple[Record, Any]]:
        sent = list(records)
        if not sent:
            return []
        return list(zip(sent, await self._send_all(sent), strict=True))

    def _raise(self) -> None:
        if self._error is not None:
            raise RuntimeError("segment-worker outbox: a delivery failed") from self._error
