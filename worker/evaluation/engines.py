"""Two ways to run a population's events through the segmentation, returning what came out.

- ``pipeline``: the production path. Topics on a broker, a ``segment-worker run`` process, the records produced
  with a Kafka client; the changes and every published model are read back from their topics.
- ``core``: the same pure code (``Segmenter`` + ``Trainer``) wired in-process, with no broker: the events in the
  same order, routed to the same partitions, samples handed straight to the trainer. It is for sweeps over many
  worlds and settings (model comparison, shadow runs), where the pipeline's seconds per world add up.

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
from worker.changes import InputRecord, Segmenter
from worker.clustering import ModelSnapshot, Trainer
from worker.errors import SegmentWorkerError
from worker.events.timefmt import parse_timestamp
from worker.features.state import UserState
from worker.kafkaio import create_topics, produce, read_all
from worker.process import WorkerProcess, metric_total
from worker.routing import partitioner
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


def split_phases(events: Sequence[dict[str, Any]], s: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Events of the first 1.5 slowest half-lives, or of the first 35 % of a longer world's span (a year of
    monthly buyers has too few users with enough events after ten days for a first model), and the rest."""
    if not events:
        return [], []
    times = [_ts(e) for e in events]
    start = min(times)
    learn_until = start + int(max(1.5 * max(s.half_lives_ms), 0.35 * (max(times) - start)))
    first = [e for e in events if _ts(e) < learn_until]
    rest = [e for e in events if _ts(e) >= learn_until]
    return first, rest


def _ts(e: dict[str, Any]) -> int:
    return parse_timestamp(e["timestamp"])


def encode(events: Iterable[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    """(key, value) records keyed by user id, as a producer following the contract sends them."""
    return [(str(e["user_id"]).encode(), codec.dumps(e)) for e in events]


# --- core ------------------------------------------------------------------------------------------------
def run_core(settings: Settings, records: Iterable[tuple[bytes, bytes]]) -> Outcome:
    """The pure pipeline in-process on (key, value) records: one Segmenter owning every partition, one Trainer,
    synchronous."""
    s = settings
    partition_of = partitioner(s.partitions)
    owned = set(range(s.partitions))
    store: dict[str, UserState] = {}
    seg = Segmenter(s, store, partition_of)
    trainer = Trainer(s)
    offsets = [0] * s.partitions
    changes: list[dict[str, Any]] = []
    snapshots: list[ModelSnapshot] = []
    processed = dead = 0
    started = time.monotonic()

    def apply(batch: list[InputRecord]) -> None:
        nonlocal processed, dead
        while batch:
            res = seg.process(batch, 2**62, 0.0)
            store.update(res.dirty)
            processed += res.processed
            dead += len(res.dead)
            changes.extend(codec.loads(c) for _, c, _ in res.changes)
            samples = [(u, UserState.from_fields(w), t) for b in res.samples for u, w, t in [codec.loads(b)]]
            snap = trainer.add(samples) if samples else None
            if snap is not None:
                first = seg.model is None
                seg.set_model(snap)
                snapshots.append(snap)
                if first:
                    swept = seg.sweep(owned, 0.0)
                    store.update(swept.dirty)
                    changes.extend(codec.loads(c) for _, c, _ in swept.changes)
            # records that arrived on another partition than their user's: on to the owner, as the worker does
            batch = [
                InputRecord(r.value, r.key, owner, r.offset, r.src_partition, r.src_offset, 0.0, r.kind)
                for owner, _, r in res.forward  # an erasure request stays one
            ]

    chunk: list[InputRecord] = []
    for key, value in records:
        try:
            p = partition_of(key.decode())
        except UnicodeDecodeError:
            p = 0
        chunk.append(InputRecord(value, key, p, offsets[p], p, offsets[p], 0.0))
        offsets[p] += 1
        if len(chunk) >= s.batch_size:
            apply(chunk)
            chunk = []
    apply(chunk)
    return Outcome("core", changes, snapshots, processed, dead, time.monotonic() - started)


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
    s = settings
    create_topics(bootstrap, {s.input_topic: s.partitions, s.output_topic: s.partitions, s.dlq_topic: s.partitions})
    worker = WorkerProcess(s, environ, work / f"{s.app_id}.log")
    first, rest = split_phases(events, s)
    total = len(events)
    try:
        worker.wait_ready(min(90.0, deadline - time.monotonic()))
        say(f"worker up (web API {worker.base})")
        started = time.monotonic()
        produce(bootstrap, s.input_topic, encode(first))
        say(f"phase 1: {len(first):,} events of the first part of event time sent; waiting for the first model")
        _wait(worker, lambda m: m.get("segment_worker_model_version", 0) >= 1, say, deadline, len(first))
        t2 = time.monotonic()
        produce(bootstrap, s.input_topic, [*encode(rest), *extra_records])
        extra = f" and {len(extra_records)} malformed records" if extra_records else ""
        say(f"phase 2: {len(rest):,} more events{extra} sent")
        m = _wait(
            worker,
            lambda m: (  # applied and their outputs acknowledged by the broker, not merely queued
                metric_total(m, "segment_worker_events_settled_total") >= total
                and m.get(f"segment_worker_outputs_delivered_total|topic={s.dlq_topic}", 0) >= len(extra_records)
            ),
            say,
            deadline,
            total,
        )
        done = time.monotonic()
        personas = worker.get("/personas")
    finally:
        worker.stop()
    changes = [codec.loads(r.value) for r in read_all(bootstrap, s.output_topic) if r.value]
    models = read_all(bootstrap, f"{s.app_id}-models-changelog")
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
