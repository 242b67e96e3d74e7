"""Where the trainer's fits run: a child process (``TRAINER_PROCESS``, the default), or a thread of the worker.

A fit takes seconds of Python and numpy (a re-check ~0.1 s: its refinements, distances and silhouettes). In a thread
it shares the interpreter lock with the event loop and Faust's consumer thread; in a process of its own it takes
another core, and decodes the samples there too. On the 2-core bench machine, which also runs the broker and the
producer (``bench/throughput.py``, 2026-12-01): saturated, the process gave 19-23k events/s against the thread's
21-24k; at ~11k events/s, event->change measured end to end p99 0.34-0.72 s against 1.1-1.4 s (in a thread, fetched
records waited for the interpreter lock and reached the pipeline 0.3-0.8 s old).

The process runs at a lower priority (``TRAINER_NICE``, 10 by default): where the cores are all busy, a fit's
slice of CPU is a wait for every event in the event loop's batch, while a model that comes a little later changes
nothing an event waits for.

Both keep one :class:`~worker.clustering.Trainer` and take the samples topic's record values; models come back as
snapshots. The child is spawned (a fork of a process running threads and an event loop is unsafe), holds the
trainer for the whole of its life and exits when its parent is gone (a SIGKILLed worker leaves no fitter behind).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

from threadpoolctl import threadpool_limits

from worker.clustering import ModelSnapshot
from worker.clustering.trainer import Trainer
from worker.errors import SegmentWorkerError
from worker.runtime.records import samples_in
from worker.settings import Settings

PARENT_CHECK_SECONDS = 1.0


class FitterGone(SegmentWorkerError):
    """The fitting process died (killed, out of memory): what it learned since the published model is lost."""


class Fitter:
    """A trainer off the event loop: in a spawned process when ``in_process``, else in a thread."""

    def __init__(self, settings: Settings, model: ModelSnapshot | None, in_process: bool) -> None:
        self._executor: Executor
        self._trainer: Trainer | None = None  # in a thread: held here
        if in_process:
            raw = model.to_bytes() if model is not None else None
            self._executor = ProcessPoolExecutor(
                1, mp_context=get_context("spawn"), initializer=_start, initargs=(settings, raw, os.getpid())
            )
        else:
            self._trainer = Trainer(settings, model)
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="segment-worker-fit")

    async def add(self, chunks: list[bytes]) -> tuple[int, ModelSnapshot | None]:
        """Fold in the samples of these record values: (samples, the model fitted when one is due)."""
        loop = asyncio.get_running_loop()
        if self._trainer is not None:
            count, snap = await loop.run_in_executor(self._executor, _fold, self._trainer, chunks)
            return count, snap
        try:
            count, raw = await loop.run_in_executor(self._executor, _add, chunks)
        except BrokenProcessPool as exc:
            raise FitterGone(f"the fitting process died: {exc}") from exc
        return count, ModelSnapshot.from_bytes(raw) if raw is not None else None

    async def pid(self) -> int:
        """The process the fits run in (this one, in a thread)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, os.getpid)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _fold(trainer: Trainer, chunks: list[bytes]) -> tuple[int, ModelSnapshot | None]:
    rows = [sample for chunk in chunks for sample in samples_in(chunk)]
    return len(rows), trainer.add(rows)


# --- inside the fitting process: its one trainer, for the whole of its life -----------------------------------
_trainer: Trainer | None = None


def limit_blas(threads: int) -> None:
    """At most ``threads`` BLAS threads in this process (0: leave the library's default). Measured at 9,000
    events/s on two cores: with OpenBLAS's two threads the fits starved the event loop (batches p50 <= 0.25 s,
    event->change p99 <= 0.5 s); with one, batches p50 <= 0.05 s and p99 <= 0.25 s."""
    if threads:
        threadpool_limits(limits=threads, user_api="blas")


def _start(settings: Settings, model: bytes | None, parent: int) -> None:
    global _trainer
    os.nice(settings.trainer_nice)
    limit_blas(settings.blas_threads)
    _trainer = Trainer(settings, ModelSnapshot.from_bytes(model) if model is not None else None)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True, name="parent-watch").start()


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(0)


def _add(chunks: list[bytes]) -> tuple[int, bytes | None]:
    assert _trainer is not None, "the fitting process was not started"
    count, snap = _fold(_trainer, chunks)
    return count, snap.to_bytes() if snap is not None else None
