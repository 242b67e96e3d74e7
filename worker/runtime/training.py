"""The trainer's host: one member of the group trains, the one assigned the single samples partition.

It reads the training samples with a consumer of its own, from the offset the published model ends at (Faust's
stream would decide the position itself: after a rebalance it can deliver records fetched before it, or none),
folds them into a :class:`~worker.clustering.Trainer` off the event loop (in a process of its own by default:
:mod:`worker.runtime.fitting`), and publishes each model it fits with the
samples offset it covers. When the samples partition is revoked, the step in flight finishes and publishes first;
whoever trains next resumes from the published model.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from worker import metrics
from worker.clustering import ModelSnapshot
from worker.runtime.fitting import Fitter, FitterGone
from worker.settings import Settings

log = logging.getLogger("worker")

READ_RECORDS = 64  # sample records per step (500 samples each)


class TrainerHost:
    def __init__(
        self,
        settings: Settings,
        samples: Any,  # a worker.refetch.RangeReader
        samples_topic: str,
        newest_model: Callable[[], Awaitable[bytes | None]],
        publish: Callable[[bytes], Awaitable[None]],
        commit: Callable[[int], Awaitable[None]],
        announce: Callable[[tuple[dict[str, Any], ...]], Awaitable[None]],
    ) -> None:
        """``newest_model`` reads the published model (whoever published it), ``publish`` writes one and returns
        once the broker has it, ``commit`` tells the group the samples offset a published model covers,
        ``announce`` writes a model's persona-change events and returns once the broker has them."""
        self.settings = settings
        self.samples, self.samples_topic = samples, samples_topic
        self._newest_model, self._publish, self._commit = newest_model, publish, commit
        self._announce = announce
        self.fitter: Fitter | None = None
        self.samples_from = 0  # next samples offset to fold in (what the published model holds ends before it)
        self.lock = asyncio.Lock()  # one step (read, fit, publish) at a time; revocation waits for it

    async def revoke(self) -> None:
        """The samples partition went to another member: stop training after the step in flight."""
        async with self.lock:
            self._stop()

    def _stop(self) -> None:
        if self.fitter is not None:
            self.fitter.close()
            self.fitter = None

    async def step(self) -> bool:
        """Read the next samples and learn from them; publish a model when one is due. False when none came."""
        async with self.lock:
            fitter = self.fitter or await self._resume()
            records, reached = await self.samples.read(
                self.samples_topic, 0, self.samples_from, None, timeout=1.0, max_records=READ_RECORDS
            )
            fresh = [r for r in records if r.offset >= self.samples_from and r.value is not None]
            self.samples_from = max(self.samples_from, reached)
            if not fresh:
                return False
            try:  # fitting can take seconds: off the event loop (and its process), so ingest goes on meanwhile
                count, snap = await fitter.add([r.value for r in fresh])
            except FitterGone as exc:  # resumed from the published model, its samples read again
                log.warning("%s; the trainer starts again from the published model", exc)
                self._stop()
                return True
            metrics.TRAINING_SAMPLES.inc(count)
            if snap is not None:
                await self._published(dataclasses.replace(snap, samples_offset=self.samples_from))
            return True

    async def _resume(self) -> Fitter:
        raw = await self._newest_model()
        snap = ModelSnapshot.from_bytes(raw) if raw is not None else None
        if snap is not None and snap.changes:
            # its trainer may have stopped between publishing it and announcing them: again, under the same ids
            await self._announce(snap.changes)
        self.fitter = Fitter(self.settings, snap, self.settings.trainer_process)
        self.samples_from = snap.samples_offset if snap is not None else 0
        log.info("trainer starts from model v%d, samples offset %d", snap.version if snap else 0, self.samples_from)
        return self.fitter

    async def _published(self, snap: ModelSnapshot) -> None:
        await self._publish(snap.to_bytes())  # first: the model the events speak of is there when they arrive
        if snap.changes:
            await self._announce(snap.changes)
            for event in snap.changes:
                metrics.PERSONA_CHANGES.labels(event["kind"]).inc()
        personas, seen = len(snap.persona_ids), snap.samples_seen
        log.info("trainer published model v%d (%d personas, %d samples)", snap.version, personas, seen)
        try:  # the group's offset (lag monitoring; where the unused Faust stream starts after a rebalance)
            await self._commit(self.samples_from)
        except Exception as exc:  # a rebalance under way: taken with the next model
            log.info("commit of the samples offset not taken: %s", exc)
