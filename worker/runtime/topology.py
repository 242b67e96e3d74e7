"""The Faust app, its topics and tables: what the worker consumes, writes and keeps, built from the settings.

The consumed streams' offsets are the worker's own (the offset gate's positions, kept in state and committed from
there: :mod:`worker.runtime.positions`), not Faust's acknowledgement tracking. The per-partition tables hold the
bytes their changelog has and are written through :meth:`Topology.stage`, whose records the outbox delivers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import faust

from worker.kafkasecurity import faust_credentials
from worker.producing import BatchSender, Record
from worker.routing import partitioner
from worker.runtime import faust_internals as fi
from worker.runtime.handoff import Handoff
from worker.runtime.records import BY_USER, ERASURES, INPUT, OutputTopics
from worker.runtime.recovery import changelog_key_encoder
from worker.settings import Settings
from worker.topics import META_TABLE, MODELS_TABLE, REROUTING, SAMPLES, SAMPLES_RETENTION, USERS_TABLE, internal_topic
from worker.web.auth import auth_middleware


def make_app(s: Settings) -> faust.App:
    """The Faust app with the worker's settings and its consumer without a task race per message."""
    app = faust.App(
        s.app_id,
        broker=s.broker,
        store="memory://",
        datadir=s.data_dir,
        web_port=s.web_port,
        web_bind=s.web_host,
        **({"canonical_url": s.web_url} if s.web_url else {}),
        **({"broker_credentials": credentials} if (credentials := faust_credentials(s)) is not None else {}),
        topic_partitions=s.partitions,
        topic_replication_factor=s.replication_factor,
        processing_guarantee=s.processing_guarantee,
        broker_session_timeout=s.session_timeout,
        broker_rebalance_timeout=s.session_timeout,
        broker_heartbeat_interval=max(0.5, s.session_timeout / 10),
        broker_max_poll_interval=max(30.0, 3 * s.session_timeout),
        consumer_auto_offset_reset="earliest",
        producer_linger=0.005,
        producer_max_batch_size=256 * 1024,  # aiokafka sends 16 kB per partition and request by default
        stream_buffer_maxsize=max(4096, 2 * s.batch_size),
        broker_max_poll_records=s.batch_size,  # a fetch is at most one batch (worker.runtime.handoff)
        key_serializer="raw",
        value_serializer="raw",
        autodiscover=False,
        # Faust compares the changelog offset its last recovery reached with the end offset the broker reports
        # now, and crashes when the first is higher. A broker that reports the start of the last record batch
        # (Tansu does) trips it when a rebalance hands a partition back. The check guards persisted stores
        # against a deleted topic; the worker's own reads go to the real end (worker.runtime.recovery).
        recovery_consistency_check=False,
        # no standby copies: the per-partition tables are recovered by the worker from the changelog (standbys
        # would be read at Faust's recovery pace and never used); the global model table is on every worker anyway
        table_standby_replicas=0,
    )
    app.transport.Consumer = fi.direct_delivery(app.transport.Consumer)
    if s.api_token:  # before the web server starts: aiohttp freezes its middlewares then
        app.web.web_app.middlewares.append(auth_middleware(s.api_token, s.api_open_paths))
    return app


def _raw_topic(
    app: faust.App, name: str, partitions: int, internal: bool = False, acks: bool = True, retention: Any = None
) -> Any:
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
        internal=internal,
        acks=acks,
        retention=retention,
    )


def _table(app: faust.App, cls: type[faust.Table], name: str, partitions: int) -> Any:
    extra = {"standby_buffer_size": 1, "is_global": True} if cls is fi.SinglePartitionGlobalTable else {}
    table = cls(
        app,
        name=name,
        default=None,
        beacon=app.tables.beacon,
        partitions=partitions,
        value_type=bytes,
        key_type=str,
        **extra,
    )
    return app.tables.add(table)


@dataclass(frozen=True)
class Topology:
    app: faust.App
    streams: dict[str, Any]  # consumed stream name -> its Faust topic (INPUT, BY_USER, ERASURES)
    samples: Any  # the training samples (one partition), subscribed so that one member is assigned it
    users: Any  # user states in their compact binary form (worker.features.wire), in memory as in the changelog
    part_meta: Any  # per partition: its positions and newest event time
    models: Any  # the model snapshots (global: every worker holds the one partition)
    outputs: OutputTopics
    handoff: Handoff  # the consumed streams' fetches, past Faust's streams
    personas: str  # the persona lifecycle events (persona-change.v1), written by the member that trains
    send_all: BatchSender  # records to the app's producer in batches, each answered with where it landed
    key_encoders: dict[str, Callable[[Any], bytes]] = field(default_factory=dict)  # per table (stage)

    @property
    def stream_topics(self) -> dict[str, str]:
        return {stream: topic.get_topic_name() for stream, topic in self.streams.items()}

    @property
    def samples_topic(self) -> str:
        name: str = self.samples.get_topic_name()
        return name

    async def put(self, table: Any, key: str, value: bytes) -> None:
        """Set a table key and wait until its changelog record is delivered."""
        await self.send_all([self.stage(table, key, value)])

    def stage(self, table: Any, key: str, value: bytes | None) -> Record:
        """Set a table key in memory (``None``: delete it) and return its changelog record (a tombstone for a
        deletion), for the outbox to send.

        Not ``table[key] = value``: that queues the record in Faust's producer buffer, whose flush before an
        offset commit gives up after 0.1 s, so a commit could cover state still unsent (a lost event after a
        restart). Our sends are awaited until delivered.
        """
        return self.stage_all(table, ((key, value),))[0][1]

    def stage_all(self, table: Any, items: Iterable[tuple[str, bytes | None]]) -> list[tuple[str, Record]]:
        """:meth:`stage` of many keys of one table: (key, its changelog record) each. The table's lookups are made
        once, not per key (a state write stages thousands at once, and the batches wait meanwhile)."""
        values, where = fi.values(table), fi.key_partitions(table)
        partition_for = table.partition_for_key
        encode = self.key_encoders.get(table.name)
        if encode is None:
            encode = self.key_encoders[table.name] = changelog_key_encoder(self.app, table)
        topic = table.changelog_topic.get_topic_name()
        staged: list[tuple[str, Record]] = []
        for key, value in items:
            partition = partition_for(key)
            if value is None:
                values.pop(key, None)
                where.pop(key, None)
            else:
                values[key] = value
                where[key] = partition
            staged.append((key, (topic, encode(key), value, partition, None)))
        return staged


def build(s: Settings, with_memberships: bool) -> Topology:
    """The app, topics and tables of a worker with these settings (memberships: custom segments configured)."""
    app = make_app(s)
    n = s.partitions
    streams = {
        INPUT: _raw_topic(app, s.input_topic, n, acks=False),
        BY_USER: _raw_topic(app, internal_topic(s, REROUTING), n, internal=True, acks=False),
        ERASURES: _raw_topic(app, s.erasure_topic, n, acks=False),
    }
    # acknowledged by the trainer itself: committed once the model holding them is published
    # (user features under a per-process digest, never an id; kept a week: the trainer reads them within seconds)
    samples = _raw_topic(app, internal_topic(s, SAMPLES), 1, internal=True, acks=False, retention=SAMPLES_RETENTION)
    users = _table(app, fi.SelfRecoveredTable, USERS_TABLE, n)
    part_meta = _table(app, fi.SelfRecoveredTable, META_TABLE, n)
    users.route = part_meta.route = partitioner(n)
    models = _table(app, fi.SinglePartitionGlobalTable, MODELS_TABLE, 1)
    outputs = OutputTopics(
        by_user=streams[BY_USER].get_topic_name(),
        dlq=_raw_topic(app, s.dlq_topic, n).get_topic_name(),
        changes=_raw_topic(app, s.output_topic, n).get_topic_name(),
        memberships=_raw_topic(app, s.membership_topic, n).get_topic_name() if with_memberships else "",
        samples=samples.get_topic_name(),
        input=s.input_topic,
        erasures=s.erasure_topic,
    )
    handoff = Handoff({stream: topic.get_topic_name() for stream, topic in streams.items()}, n)
    app.transport.Consumer = fi.fetch_handoff(app.transport.Consumer, handoff, s.fetch_max_wait_ms)
    personas = _raw_topic(app, s.persona_topic, n).get_topic_name()
    sender = BatchSender(lambda: fi.kafka_producer(app))
    return Topology(app, streams, samples, users, part_meta, models, outputs, handoff, personas, sender)
