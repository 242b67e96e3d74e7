"""The one-second tick: readiness, the states waiting for their write, a model that arrived while no events flow,
probes of partitions standing still, commits of the positions the changelog holds, and the per-partition gauges."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from aiokafka.errors import ConsumerStoppedError
from faust.types import TP

from worker import metrics
from worker.runtime import faust_internals as fi
from worker.runtime.pipeline import Pipeline

log = logging.getLogger("worker")


def _remove_labels(metric: Any, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never set
        metric.remove(*labels)


class Housekeeping:
    def __init__(self, pipeline: Pipeline, prober: Any) -> None:
        """``prober``: a worker.refetch.RangeReader of its own (the timer reads beside the batches)."""
        self.pipeline, self.prober = pipeline, prober
        self.ownership, self.positions = pipeline.ownership, pipeline.positions
        self.app = pipeline.app
        self._reported: set[tuple[str, int]] = set()  # (topic, partition) label values of the per-partition gauges

    async def tick(self) -> None:
        own = self.ownership
        metrics.READY.set(1 if own.ready() else 0)
        if own.closing or not own.settled():
            return
        started = time.perf_counter()
        await self.pipeline.write_due()  # states waiting when no batch came since their interval ended
        if not self.pipeline.topics.ok:
            return
        # a model can arrive while no events flow (the trainer lags the stream): assign waiting users now
        async with self.pipeline.lock:
            await self.pipeline.catch_up()
        try:
            await self.probe()
        except ConsumerStoppedError:
            if own.closing:  # the reader was closed under the probe
                return
            raise
        await self.pipeline.commit()
        self.report_positions()
        metrics.HOUSEKEEPING_SECONDS.observe(time.perf_counter() - started)

    async def probe(self) -> None:
        """Ask the broker what follows a position that stood still. Records the consumer dropped and never
        re-delivers show no hole when nothing comes after them (the end of a partition, a restart behind a commit
        that skipped them); here they are found and applied: those a probe saw that the consumer still has not
        delivered by the next probe. Backs off while a partition has nothing new."""
        streams = self.pipeline.streams
        for stream, p, position in self.positions.current():
            if not self.positions.probe_due(stream, p, time.monotonic()):
                continue
            records, reached = await self.prober.read(streams[stream], p, position, None)
            found_twice = self.positions.probed(stream, p, position, bool(records), time.monotonic())
            if found_twice and self.ownership.settled():  # seen a probe ago and still not delivered
                tp = TP(streams[stream], p)
                log.info(
                    "%s partition %d: records from offset %d not delivered by the consumer after %.0f s "
                    "(fetching paused for a full buffer: %s, paused: %s); reading them from the broker",
                    stream,
                    p,
                    position,
                    self.positions.waited(stream, p),
                    *fi.fetching_state(self.app.consumer, tp),
                )
                fi.resume_fetching(self.app.consumer, tp)
                async with self.pipeline.lock:
                    await self.pipeline.handle_locked(stream, [], records, [(p, position, reached)])

    def report_positions(self) -> None:
        """Per owned partition: consumer lag, watermark and its delay behind wall time; the gauges of partitions
        no longer owned are removed (another worker reports them)."""
        now = time.time()
        current: set[tuple[str, int]] = set()
        for stream, p, position in self.positions.current():
            topic = self.pipeline.streams[stream]
            current.add((topic, p))
            end = self.app.consumer.highwater(TP(topic, p))
            if end is not None:  # known once the consumer fetched from the partition
                metrics.CONSUMER_LAG.labels(topic, str(p)).set(max(0, end - position))
        watermarks = self.pipeline.segmenter.watermarks
        for p in self.ownership.owned:
            current.add(("", p))
            watermark = watermarks.get(p) / 1000
            metrics.WATERMARK.labels(str(p)).set(watermark)
            if watermark > 0:
                metrics.WATERMARK_DELAY.labels(str(p)).set(max(0.0, now - watermark))
        for topic, p in self._reported - current:
            if topic:
                _remove_labels(metrics.CONSUMER_LAG, topic, str(p))
            else:
                _remove_labels(metrics.WATERMARK, str(p))
                _remove_labels(metrics.WATERMARK_DELAY, str(p))
        self._reported = current
        metrics.PARTITIONS_OWNED.set(len(self.ownership.owned))
