"""Two ways to run a population's events through the segmentation, returning what came out.

- ``pipeline``: the production path. Topics on a broker, a ``segment-worker run`` process, the records produced
  with a Kafka client; the changes and every published model are read back from their topics.
- ``core``: the same pure code (``Segmenter`` + ``Trainer``, the worker's record encoding) in-process, with no
  broker: the events in the same order, routed to the same partitions, samples handed straight to the trainer.
  It is for sweeps over many worlds and settings (model comparison, shadow runs), where the pipeline's seconds
  per world add up.

Both stream in two phases as a live source would: the first 1.5 slowest half-lives of event time, then — once
the first model exists — the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker import codec
from worker.changes import BatchResult, InputRecord, Segmenter
from worker.clustering import ModelSnapshot
from worker.clustering.trainer import Trainer
from worker.errors import SegmentWorkerError
from worker.events.timefmt import parse_timestamp
from worker.features.state import UserState
from worker.kafkaio import create_topics, produce, read_all
from worker.process import WorkerProcess, metric_total
from worker.routing import partitioner
from worker.runtime.records import BY_USER, INPUT, OutputEncoder, OutputTopics, input_record, samples_in
from worker.settings import Settings

Say = Callable[[str], None]


@dataclass
class Outcome:
    engine: str
    changes: list[dict[str, Any]]  # decoded segment-change records, in the order they were read
    snapshots: list[ModelSnapshot]  # every model version published, oldest first
    processed: int
    dead_letters: int
    seconds: float  # wall time from the first event sent to the last one applied
    personas: dict[str, Any] = field(default_factory=dict)  # the worker's /personas (pipeline only)
    extra: dict[str, Any] = field(default_factory=dict)


def split_phases(
    events: Sequence[dict[str, Any]], settings: Settings
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Events of the first 1.5 slowest half-lives, or of the first 35 % of a longer world's span (a year of
    monthly buyers has too few users with enough events after ten days for a first model), and the rest."""
    if not events:
        return [], []
    times = [_ts(e) for e in events]
    start = min(times)
    learn_until = start + int(max(1.5 * max(settings.half_lives_ms), 0.35 * (max(times) - start)))
    first = [e for e in events if _ts(e) < learn_until]
    rest = [e for e in events if _ts(e) >= learn_until]
    return first, rest


def _ts(e: dict[str, Any]) -> int:
    return parse_timestamp(e["timestamp"])


def encode(events: Iterable[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    """(key, value) records keyed by user id, as a producer following the contract sends them."""
    return [(str(e["user_id"]).encode(), codec.dumps(e)) for e in events]


# --- core ------------------------------------------------------------------------------------------------
REPLAY_BATCH = 2000  # records a replay applies between two adoptions of the trainer's newest model (CoreRun)


def run_core(settings: Settings, records: Iterable[tuple[bytes, bytes]], batch: int = REPLAY_BATCH) -> Outcome:
    """The pure pipeline in-process on (key, value) records, in batches of ``batch``; see :class:`CoreRun`."""
    return CoreRun(settings, batch).run(records)


class CoreRun:
    """The worker's core with a list for a broker: one Segmenter owning every partition, one Trainer, synchronous.

    A batch's outputs are encoded by the worker's own :class:`~worker.runtime.records.OutputEncoder` and read back
    as the worker reads them: re-routed records come back through ``input_record`` with their headers (an erasure
    request stays one), training samples reach the trainer as records of the samples topic, the first model gives
    every waiting user a persona. What the worker adds around this — the offset gate, the changelog and the outbox —
    guards against loss and re-delivery, which cannot happen here.

    The newest model is adopted after each batch of ``batch`` records. The worker adopts one with the first state
    write after the trainer publishes it (at most a second later), whatever its batches (``BATCH_SIZE`` only caps
    them; below saturation the window sizes them), so the replay's batch is its own: a throughput setting does not
    move the quality figures.
    """

    def __init__(self, settings: Settings, batch: int = REPLAY_BATCH) -> None:
        self.settings = settings
        self.batch = batch
        self.partition_of = partitioner(settings.partitions)
        self.store: dict[str, UserState] = {}
        self.segmenter = Segmenter(settings, self.store, self.partition_of)
        self.trainer = Trainer(settings)
        self.topics = OutputTopics(
            by_user="by-user",
            dlq=settings.dlq_topic,
            changes=settings.output_topic,
            memberships=settings.membership_topic,
            samples="samples",
            input=settings.input_topic,
            erasures=settings.erasure_topic,
        )
        self.encoder = OutputEncoder(self.topics, self.partition_of)
        self.offsets = {INPUT: [0] * settings.partitions, BY_USER: [0] * settings.partitions}
        self.outcome = Outcome("core", [], [], 0, 0, 0.0)

    def run(self, records: Iterable[tuple[bytes, bytes]]) -> Outcome:
        started = time.monotonic()
        batch: list[InputRecord] = []
        for key, value in records:
            batch.append(self._consumed(INPUT, self._partition(key), key, value, None))
            if len(batch) >= self.batch:
                self._apply(batch)
                batch = []
        self._apply(batch)
        self.outcome.seconds = time.monotonic() - started
        return self.outcome

    def _partition(self, key: bytes) -> int:
        try:
            return self.partition_of(key.decode())
        except UnicodeDecodeError:
            return 0

    def _consumed(self, stream: str, p: int, key: Any, value: Any, headers: Any) -> InputRecord:
        offset = self.offsets[stream][p]
        self.offsets[stream][p] = offset + 1
        return input_record(stream, p, offset, key, value, headers, self.settings.partitions, 0.0)

    def _apply(self, batch: list[InputRecord]) -> None:
        """A batch, then the records it re-routed to their users' partitions, until none is left."""
        while batch:
            batch = self._take(self.segmenter.process(batch, 2**62, 0.0))

    def _take(self, res: BatchResult) -> list[InputRecord]:
        """A batch's result into the store, the outcome and the trainer; returns the re-routed records."""
        self.store.update(res.dirty)
        for uid in res.erased:
            self.store.pop(uid, None)
        self.outcome.processed += res.processed
        rerouted, samples = [], []
        for topic, key, value, p, headers in self.encoder.encode(res):
            if topic == self.topics.dlq:
                self.outcome.dead_letters += 1
            elif value is None or p is None:  # memberships (keyed by the producer's partitioner): not an outcome
                continue
            elif topic == self.topics.by_user:
                rerouted.append(self._consumed(BY_USER, p, key, value, headers))
            elif topic == self.topics.changes:
                self.outcome.changes.append(codec.loads(value))
            elif topic == self.topics.samples:
                samples.extend(samples_in(value))
        snap = self.trainer.add(samples) if samples else None
        if snap is not None:
            self._adopt(snap)
        return rerouted

    def _adopt(self, snap: ModelSnapshot) -> None:
        before = self.segmenter.model
        self.segmenter.set_model(snap)
        self.outcome.snapshots.append(snap)
        every = set(range(self.settings.partitions))
        since = before.version if before is not None else 0
        self._take(self.segmenter.sweep(every, 0.0, set() if before else every, since))


# --- pipeline --------------------------------------------------------------------------------------------
def run_pipeline(
    settings: Settings,
    events: Sequence[dict[str, Any]],
    environ: dict[str, str],
    work: Path,
    bootstrap: str,
    say: Say,
    deadline: float,
    extra_records: Sequence[tuple[bytes, bytes]] = (),
) -> Outcome:
    """Topics on the broker at ``bootstrap``, a worker process, the events in two phases (``extra_records``, such
    as malformed input, with the second); returns the changes and model versions read back from the topics."""
    create_topics(
        bootstrap,
        {
            settings.input_topic: settings.partitions,
            settings.output_topic: settings.partitions,
            settings.dlq_topic: settings.partitions,
        },
    )
    worker = WorkerProcess(settings, environ, work / f"{settings.app_id}.log")
    first, rest = split_phases(events, settings)
    total = len(events)
    try:
        worker.wait_ready(min(90.0, deadline - time.monotonic()))
        say(f"worker up (web API {worker.base})")
        started = time.monotonic()
        produce(bootstrap, settings.input_topic, encode(first))
        say(f"phase 1: {len(first):,} events of the first part of event time sent; waiting for the first model")
        _wait(worker, lambda m: m.get("segment_worker_model_version", 0) >= 1, say, deadline, len(first))
        t2 = time.monotonic()
        produce(bootstrap, settings.input_topic, [*encode(rest), *extra_records])
        extra = f" and {len(extra_records)} malformed records" if extra_records else ""
        say(f"phase 2: {len(rest):,} more events{extra} sent")
        m = _wait(
            worker,
            lambda m: (  # applied and their outputs acknowledged by the broker, not merely queued
                metric_total(m, "segment_worker_events_settled_total") >= total
                and m.get(f"segment_worker_outputs_delivered_total|topic={settings.dlq_topic}", 0) >= len(extra_records)
            ),
            say,
            deadline,
            total,
        )
        done = time.monotonic()
        # and the trainer has learned every sample the stream gave it (its fits trail the stream, the more so on
        # a busy machine): the models are those of all the data
        m = _wait(worker, _trainer_caught_up, say, deadline, total)
        personas = worker.get("/personas")
    finally:
        worker.stop()
    changes = [codec.loads(r.value) for r in read_all(bootstrap, settings.output_topic) if r.value]
    models = read_all(bootstrap, f"{settings.app_id}-models-changelog")
    snaps = {snap.version: snap for snap in (ModelSnapshot.from_bytes(r.value) for r in models if r.value)}
    return Outcome(
        "pipeline",
        changes,
        [snaps[v] for v in sorted(snaps)],
        int(metric_total(m, "segment_worker_events_processed_total")),
        int(metric_total(m, "segment_worker_events_dead_lettered_total")),
        done - started,
        personas,
        {"metrics": m, "phase2_events": len(rest) + len(extra_records), "phase2_seconds": done - t2},
    )


def _trainer_caught_up(m: dict[str, float]) -> bool:
    sent = m.get("segment_worker_training_samples_sent_total", 0.0)
    return m.get("segment_worker_training_samples_total", 0.0) >= sent


def _wait(
    worker: WorkerProcess, done: Callable[[dict[str, float]], bool], say: Say, deadline: float, target: int
) -> dict[str, float]:
    last = 0.0
    while True:
        if worker.proc.poll() is not None:
            raise SegmentWorkerError(f"worker exited with {worker.proc.returncode}; see {worker.log_path}")
        m = worker.metrics()
        if done(m):
            return m
        if time.monotonic() > deadline:
            raise SegmentWorkerError("timed out; see " + str(worker.log_path))
        if time.monotonic() - last >= 2.0:
            last = time.monotonic()
            say(
                f"processed {metric_total(m, 'segment_worker_events_processed_total'):,.0f}/{target:,} events, "
                f"{metric_total(m, 'segment_worker_segment_changes_total'):,.0f} segment changes, "
                f"model v{m.get('segment_worker_model_version', 0):.0f}"
            )
        time.sleep(0.5)
