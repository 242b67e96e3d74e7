"""The outbox and a producer of its own on a thread with its own event loop.

Every step of a delivery is a hop between tasks: the producer's sender, the connection's reader, the batch futures,
the outbox's loops. In the app's loop each hop waits for whatever runs there, and at high rates that is a batch of
events (tens of milliseconds): a send of three records took 100-200 ms, and a change waited for two or three of them.
On a thread of their own the hops wait only for the interpreter lock, which the batches hand over every few
milliseconds (``sys.getswitchinterval``), while the rounds keep every order of :mod:`worker.outbox`.

The app's loop keeps the outbox's interface: :meth:`OutboxThread.add` hands a batch's records over in order and
returns at once (it waits only while too much is queued), :meth:`drain` waits for everything handed over, and the
callbacks (the positions a round made durable, the local store's writes, the delivered counts) run in the app's loop,
in the order the thread delivered them, before a ``drain`` that follows returns.

Pure asyncio; the records go to a :class:`Sender` (the worker's: :class:`worker.producing.ProducerSender` on a
producer made like Faust's own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from worker.outbox import Outbox
from worker.producing import Record

log = logging.getLogger("worker")

# one batch's hand-over: outputs, states, positions, after_outputs, after_all, seal
_Item = tuple[
    list[Record],
    list[tuple[Any, Record]],
    list[tuple[Any, Record]],
    Callable[[], None] | None,
    Callable[[], None] | None,
    bool,
]


class Sender(Protocol):
    """Sends records and answers each one's delivery, in order (the outbox's ``send_all``); started and stopped in
    the thread's loop."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def __call__(self, records: Sequence[Record]) -> Sequence[Any]: ...


class OutboxThread:
    def __init__(
        self,
        sender: Sender,
        max_pending: int = 50_000,
        on_round: Callable[[float, int], None] | None = None,
        on_stored: Callable[[list[tuple[Record, Any]]], None] | None = None,
    ) -> None:
        self._sender = sender  # started and used in the thread's loop
        self._max_pending = max_pending
        self._on_round = on_round  # runs in the thread (metrics)
        self._on_stored = on_stored  # runs in the app's loop
        self._main: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._outbox: Outbox | None = None
        self._intake: asyncio.Queue[_Item] | None = None  # the thread's, in hand-over order
        self._started = threading.Event()
        self._handed = 0  # records handed over (written by the app's loop only)
        self._taken = 0  # of them, added to the outbox (written by the thread only)
        self._queued = 0  # the outbox's pending records as the thread last saw them
        self._room: asyncio.Event | None = None  # set (in the app's loop) whenever the thread made room
        self._done: asyncio.Future[None] | None = None  # the thread's delivery loop ended (its error, if any)
        self._error: BaseException | None = None

    @property
    def pending(self) -> int:
        """Records handed over and not yet delivered (as of the thread's last look; read from any thread)."""
        return self._handed - self._taken + self._queued

    async def add(
        self,
        outputs: Iterable[Record] = (),
        states: Iterable[tuple[Any, Record]] = (),
        positions: Iterable[tuple[Any, Record]] = (),
        after_outputs: Callable[[], None] | None = None,
        after_all: Callable[[], None] | None = None,
        seal: bool = False,
    ) -> None:
        """Hand one batch's records to the thread (see :meth:`worker.outbox.Outbox.add`); waits only while too much
        is queued, and raises once a delivery failed."""
        loop, room = await self._ready()
        item: _Item = (
            list(outputs),
            list(states),
            list(positions),
            self._back(after_outputs),
            self._back(after_all),
            seal,
        )
        while self._error is None and self.pending >= self._max_pending:
            room.clear()
            await room.wait()
        self._raise()
        self._handed += len(item[0]) + len(item[1]) + len(item[2])
        assert self._intake is not None
        loop.call_soon_threadsafe(self._intake.put_nowait, item)

    async def drain(self) -> None:
        """Wait until everything handed over is delivered and its callbacks ran (raises a delivery's error)."""
        loop, _ = await self._ready()
        self._raise()
        drained = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._drain(), loop))
        _, done = self._start()
        await asyncio.wait([drained, done], return_when=asyncio.FIRST_COMPLETED)  # a failed thread drains nothing
        self._raise()
        if not drained.done():
            drained.cancel()
            raise RuntimeError("segment-worker outbox: the delivery thread ended")
        drained.result()

    async def run(self) -> None:
        """Wait for the thread's delivery loop (starting it if ``add`` or ``drain`` did not); raises its first error.
        Cancelled (the app stops): the thread's producer stops (sending what it holds) and the thread ends."""
        thread, done = self._start()
        try:
            await done
        finally:
            if self._loop is not None and self._loop.is_running():
                self._loop.call_soon_threadsafe(self._stop)
            await asyncio.to_thread(thread.join, 30.0)

    # -- the thread

    def _serve(self, done: asyncio.Future[None]) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._deliver())
        except BaseException as exc:  # handed to the app's loop
            self._fail(done, exc)
        else:
            self._call_main(_settle, done, None)
        finally:
            loop.close()

    async def _deliver(self) -> None:
        await self._sender.start()
        try:
            self._outbox = Outbox(self._sender, self._max_pending, self._round_done, self._stored)
            self._intake = asyncio.Queue()
            self._started.set()
            self._call_main(self._room_made)
            intake = asyncio.ensure_future(self._take())
            delivery = asyncio.ensure_future(self._outbox.run())
            try:
                finished, _ = await asyncio.wait([intake, delivery], return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    task.result()
            finally:
                intake.cancel()
                delivery.cancel()
                await asyncio.gather(intake, delivery, return_exceptions=True)
        finally:
            with contextlib.suppress(Exception):  # the delivery's own error is the one to report
                await self._sender.stop()

    async def _take(self) -> None:
        assert self._intake is not None and self._outbox is not None
        while True:
            outputs, states, positions, after_outputs, after_all, seal = await self._intake.get()
            try:
                await self._outbox.add(outputs, states, positions, after_outputs, after_all, seal)
            finally:
                self._intake.task_done()
            self._taken += len(outputs) + len(states) + len(positions)
            self._queued = self._outbox.pending

    async def _drain(self) -> None:
        assert self._intake is not None and self._outbox is not None
        await self._intake.join()
        await self._outbox.drain()

    def _stop(self) -> None:
        for task in asyncio.all_tasks():
            task.cancel()

    def _round_done(self, seconds: float, records: int) -> None:
        assert self._outbox is not None
        self._queued = self._outbox.pending
        self._call_main(self._room_made)
        if self._on_round is not None:
            self._on_round(seconds, records)

    def _stored(self, stored: list[tuple[Record, Any]]) -> None:
        if self._on_stored is not None:
            self._call_main(self._on_stored, stored)

    def _back(self, callback: Callable[[], None] | None) -> Callable[[], None] | None:
        """A callback the thread calls, run in the app's loop."""
        if callback is None:
            return None
        return lambda: self._call_main(callback)

    def _call_main(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._main is not None
        with contextlib.suppress(RuntimeError):  # the app's loop closed under a late callback
            self._main.call_soon_threadsafe(callback, *args)

    def _room_made(self) -> None:
        if self._room is not None:
            self._room.set()

    def _fail(self, done: asyncio.Future[None], exc: BaseException) -> None:
        self._error = exc
        self._call_main(self._room_made)
        self._call_main(_settle, done, exc)

    # -- the app's loop

    def _start(self) -> tuple[threading.Thread, asyncio.Future[None]]:
        """The thread, started by the first call of ``run``, ``add`` or ``drain``."""
        if self._thread is None or self._done is None:
            self._main = asyncio.get_running_loop()
            self._room = asyncio.Event()
            self._done = self._main.create_future()
            self._thread = threading.Thread(
                target=self._serve, args=(self._done,), name="segment-worker-outbox", daemon=True
            )
            self._thread.start()
        return self._thread, self._done

    async def _ready(self) -> tuple[asyncio.AbstractEventLoop, asyncio.Event]:
        """The thread's loop once it runs."""
        self._start()
        while not self._started.is_set():
            self._raise()
            await asyncio.sleep(0.01)
        assert self._loop is not None and self._room is not None
        return self._loop, self._room

    def _raise(self) -> None:
        if isinstance(self._error, asyncio.CancelledError):
            raise RuntimeError("segment-worker outbox: stopped")
        if self._error is not None:
            raise RuntimeError("segment-worker outbox: a delivery failed") from self._error


def _settle(done: asyncio.Future[None], exc: BaseException | None) -> None:
    if done.done():
        return
    if exc is None:
        done.set_result(None)
    elif isinstance(exc, asyncio.CancelledError):  # stopped (the app stops)
        done.cancel()
    else:
        done.set_exception(exc)


Deliveries = Outbox | OutboxThread  # what the pipeline hands its batches' writes to (the worker's: the thread)
