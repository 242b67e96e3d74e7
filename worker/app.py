"""Wiring only: builds the runtime's parts (:mod:`worker.runtime`) around the pure core and registers Faust's
agents, tasks, timers, signals and web views.

Data path::

    input topic ──hand-off──► Pipeline (gate → Segmenter → outbox) ──► segment-changes, dead letters,
    erasure topic ────┘ │                                                users table (changelog)
                        └──► <app>-events-by-user (keyed by user_id) ──hand-off──► Pipeline
    Segmenter samples ──► <app>-training-samples (1 partition: one trainer per group)
    TrainerHost ──► models global table (every worker reads the same snapshot: ModelFollower)
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from pathlib import Path
from typing import Any

import faust
from aiokafka.errors import ConsumerStoppedError
from faust.types import TP

from worker import codec, corebuild, metrics
from worker.changes import Segmenter
from worker.changes.owners import UserPartitions
from worker.clustering import ModelSnapshot
from worker.features import wire
from worker.kafkasecurity import aiokafka_config, kafka_python_config
from worker.localstore import LocalStore
from worker.personas.lifecycle import event_key
from worker.producing import ProducerSender, Record
from worker.refetch import RangeReader
from worker.routing import partitioner
from worker.runtime import faust_internals as fi
from worker.runtime import topology
from worker.runtime.delivery import Deliveries, OutboxThread
from worker.runtime.housekeeping import Housekeeping
from worker.runtime.modelpin import MODEL_KEY, MODEL_SLOTS, slot_key
from worker.runtime.ownership import TAIL_RECORDS, Ownership
from worker.runtime.pipeline import Pipeline
from worker.runtime.positions import Positions
from worker.runtime.records import BY_USER, ERASURES, INPUT, input_record
from worker.runtime.recovery import ChangelogReader
from worker.runtime.training import TrainerHost
from worker.segments.rules import load_segment_rules
from worker.settings import Settings
from worker.topics import META_TABLE, USERS_TABLE, KafkaTopicAdmin, TopicWatch, worker_topics
from worker.web import views

log = logging.getLogger("worker")

TOPIC_CHECK_SECONDS = 10.0  # between checks of the topics' partition counts (worker.topics.TopicWatch)
AGENTS = ((INPUT, "ingest"), (BY_USER, "ingest-by-user"), (ERASURES, "erasures"))


def create_app(settings: Settings) -> faust.App:
    s = settings
    _announce_core()
    # custom segments (rules on features), evaluated in the same pass as the personas; their own topic
    segment_rules = load_segment_rules(s.segment_rules, s.half_lives_ms) if s.segment_rules else ()
    topo = topology.build(s, with_memberships=bool(segment_rules))
    app = topo.app
    partition_of = partitioner(s.partitions)
    # the local copy of the per-partition tables (worker.localstore), if configured
    local = LocalStore(Path(s.data_dir) / f"{s.app_id}-state.rocksdb") if s.state_store == "rocksdb" else None
    outbox = _outbox(topo, local)
    user_states = wire.EncodedStates(fi.values(topo.users))  # decoded on access
    segmenter = Segmenter(
        s, user_states, UserPartitions(fi.key_partitions(topo.users), partition_of), segment_rules=segment_rules
    )
    positions = Positions(topo.stream_topics)
    isolation = "read_committed" if s.processing_guarantee == "exactly_once" else "read_uncommitted"
    auth = aiokafka_config(s)  # TLS/SASL of the worker's own aiokafka clients (Faust's get broker_credentials)
    changelog = ChangelogReader(
        app, s.bootstrap_servers, isolation, local, frozenset((USERS_TABLE, META_TABLE)), **auth
    )
    filler = RangeReader(s.bootstrap_servers, isolation, **auth)  # holes in a batch, under the pipeline's lock
    prober = RangeReader(s.bootstrap_servers, isolation, **auth)  # partitions standing still, from the timer
    sampler = RangeReader(s.bootstrap_servers, isolation, **auth)  # the training samples, for the trainer
    # the topic set as planned (``run`` created and checked it before the app started), checked again while running
    admin = functools.partial(KafkaTopicAdmin, s.bootstrap_servers, kafka_python_config(s))
    topics = TopicWatch(worker_topics(s), admin, s.app_id, topo.outputs.by_user, s.partitions)
    ownership = Ownership(s, topo, changelog, positions, segmenter, outbox, topics, filler.beginning)
    pipeline = Pipeline(s, topo, segmenter, positions, ownership, outbox, topics, filler, partition_of)
    trainer = _trainer(s, topo, changelog, sampler)
    _lifecycle(app, outbox, ownership, pipeline, trainer, topo.samples_topic, (filler, prober, sampler), topics, local)
    _agents(app, s, topo, pipeline, trainer, ownership)
    _timers(app, Housekeeping(pipeline, prober), topics, ownership)
    views.register(
        app,
        views.Sources(
            segmenter,
            topo.users,
            ownership.owned,
            ownership.assigned,
            ownership.ready,
            lambda: topics.found,
            partition_of,
            s.half_lives_ms,
            functools.partial(_kept_models, topo),
            pipeline.timeline,
        ),
    )
    return app


def _announce_core() -> None:
    build = corebuild.current()
    metrics.CORE_BUILD.labels(build.label).set(1)
    if not build.compiled:
        log.warning("the per-event core runs interpreted (about 0.6x the compiled one's events/s): %s", build.reason)


def _kept_models(topo: topology.Topology) -> list[ModelSnapshot]:
    """The model versions the group keeps beside the current one (the models table's slots)."""
    raws = (topo.models.get(slot_key(i)) for i in range(MODEL_SLOTS))
    return [ModelSnapshot.from_bytes(raw) for raw in raws if raw]


def _outbox(topo: topology.Topology, local: LocalStore | None) -> OutboxThread:
    """The outbox on a thread with a producer of its own, made as the app's is; states and positions it delivered
    go into the local copy, if any, with where the changelog has them."""
    kept_locally = {t.changelog_topic.get_topic_name(): t.name for t in (topo.users, topo.part_meta)}

    def stored(delivered: list[tuple[Record, Any]]) -> None:
        if local is not None:
            local.write(
                (kept_locally[topic], meta.partition, meta.offset, key or b"", value)
                for (topic, key, value, _, _), meta in delivered
            )

    outbox = OutboxThread(
        ProducerSender(lambda: fi.new_producer(topo.app)),
        on_round=lambda seconds, _records: metrics.OUTBOX_ROUND_SECONDS.observe(seconds),
        on_stored=stored,
    )
    metrics.OUTBOX_PENDING.set_function(lambda: outbox.pending)
    return outbox


def _trainer(s: Settings, topo: topology.Topology, changelog: ChangelogReader, sampler: RangeReader) -> TrainerHost:
    """One member of the group trains: the one assigned the single samples partition (Faust's assignment says
    who); it publishes to the models table and tells the group the samples offset a model covers."""
    samples_tp = TP(topo.samples_topic, 0)

    async def newest_model() -> bytes | None:
        await changelog.read(topo.models, {0}, tail=TAIL_RECORDS)  # to the real end: whoever published it
        raw: bytes | None = topo.models.get(MODEL_KEY)
        return raw

    async def publish(raw: bytes) -> None:
        # the version's own slot first: a worker that adopts it from MODEL_KEY can pin it after a restart
        await topo.put(topo.models, slot_key(ModelSnapshot.version_of(raw) or 0), raw)
        await topo.put(topo.models, MODEL_KEY, raw)

    async def commit(offset: int) -> None:
        await fi.commit_offsets(topo.app.consumer, {samples_tp: offset})

    async def announce(events: tuple[dict[str, Any], ...]) -> None:
        await topo.send_all([(topo.personas, event_key(e).encode(), codec.dumps(e), None, None) for e in events])

    return TrainerHost(s, sampler, topo.samples_topic, newest_model, publish, commit, announce)


def _lifecycle(
    app: faust.App,
    outbox: Deliveries,
    ownership: Ownership,
    pipeline: Pipeline,
    trainer: TrainerHost,
    samples_topic: str,
    readers: tuple[RangeReader, ...],
    topics: TopicWatch,
    local: LocalStore | None,
) -> None:
    """Delivery, revocation and shutdown."""

    @app.task
    async def deliver() -> None:
        try:
            await outbox.run()
        except Exception as exc:  # a write that cannot be delivered: stop before any position is committed past it
            log.exception("delivery failed; stopping the worker")
            await app.crash(exc)

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        if any(tp.topic == samples_topic for tp in revoked):
            await trainer.revoke()  # a fit in flight publishes first; the next trainer resumes from it
        await pipeline.revoke()

    @app.on_before_shutdown.connect
    async def close_readers(sender: Any, **kwargs: Any) -> None:
        ownership.closing = True  # the timer's and the trainer's broker reads stop with the readers
        try:  # what the last batches wrote (a restart would redo it; delivering it saves the redo)
            await asyncio.wait_for(_write_all(pipeline, outbox), timeout=10.0)
        except Exception as exc:
            log.warning("outbox not drained at shutdown: %s", exc)
        for reader in readers:
            await reader.stop()
        topics.close()
        if local is not None:
            local.close()


async def _write_all(pipeline: Pipeline, outbox: Deliveries) -> None:
    await pipeline.write_now()
    await outbox.drain()


def _agents(
    app: faust.App, s: Settings, topo: topology.Topology, pipeline: Pipeline, trainer: TrainerHost, own: Ownership
) -> None:
    """The ingest agents (batches of each consumed stream through the pipeline), the samples subscription and the
    training loop."""
    for stream_name, agent_name in AGENTS:
        _ingest_agent(app, s, topo.streams[stream_name], stream_name, agent_name, pipeline)
    _feeder(app, s, topo, pipeline)

    @app.agent(topo.samples, name="samples-assignment")
    async def samples_assignment(stream: Any) -> None:
        """Subscribes the group to the samples topic so that one member is assigned it; the records go unused
        here (the trainer reads them with its own consumer)."""
        async for _ in stream.take_events(1000, within=1.0):
            pass

    samples_tp = TP(topo.samples_topic, 0)

    @app.task
    async def training() -> None:
        try:
            while not own.closing:
                fed = own.settled() and samples_tp in app.assignor.assigned_actives() and await trainer.step()
                if not fed:
                    await asyncio.sleep(0.5)
        except ConsumerStoppedError:
            if not own.closing:
                raise
        except Exception as exc:
            log.exception("trainer failed; stopping the worker")
            await app.crash(exc)


def _ingest_agent(app: faust.App, s: Settings, topic: Any, stream_name: str, name: str, pipeline: Pipeline) -> None:
    """The agent of one consumed stream: it subscribes the group to the topic, whose records the consumer hands to
    the pipeline in whole fetches (:mod:`worker.runtime.handoff`). Records reaching it anyway (a Faust whose fetch
    differs from the one checked) are counted and applied all the same."""

    streamed = metrics.RECORDS_STREAMED.labels(stream_name)  # exported from the start, at 0

    @app.agent(topic, name=name)
    async def ingest(stream: Any) -> None:
        async for events in stream.take_events(s.batch_size, within=s.batch_window):
            now = time.monotonic()
            batch = [
                input_record(stream_name, m.partition, m.offset, m.key, m.value, m.headers, s.partitions, now)
                for m in (e.message for e in events)
            ]
            streamed.inc(len(batch))
            await pipeline.handle(stream_name, batch)


def _feeder(app: faust.App, s: Settings, topo: topology.Topology, pipeline: Pipeline) -> None:
    @app.task
    async def feed() -> None:
        """The consumed streams' fetches through the pipeline, as they come."""
        while True:
            await pipeline.take(await topo.handoff.next(s.batch_size, s.batch_window))


def _timers(app: faust.App, housekeeping: Housekeeping, topics: TopicWatch, own: Ownership) -> None:
    @app.timer(TOPIC_CHECK_SECONDS)
    async def check_topics() -> None:
        if not own.closing:
            await topics.check()

    @app.timer(1.0)
    async def tick() -> None:
        await housekeeping.tick()
