"""Plain Kafka client helpers (kafka-python) for the tools around the worker: generate, replay, demo, tests."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from worker.errors import BrokerError

# ``security`` of each helper: kafka-python's TLS/SASL keyword arguments (worker.kafkasecurity.kafka_python_config)
Security = Mapping[str, Any] | None


def create_topics(
    bootstrap: str,
    topics: dict[str, int],
    replication: int = 1,
    compacted: Iterable[str] = (),
    security: Security = None,
) -> None:
    """Create topics that do not exist yet (partitions per topic); those named in ``compacted`` keep the newest
    record per key (``cleanup.policy=compact``)."""
    compact = set(compacted)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="segment-worker-admin", **(security or {}))
    try:
        existing = set(admin.list_topics())
        new = [
            NewTopic(name, p, replication, topic_configs={"cleanup.policy": "compact"} if name in compact else None)
            for name, p in topics.items()
            if name not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):  # raced with another creator
                admin.create_topics(new)
    finally:
        admin.close()


def partition_counts(bootstrap: str, topics: Iterable[str], security: Security = None) -> dict[str, int]:
    """Partitions of each of ``topics`` that exists."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="segment-worker-admin", **(security or {}))
    try:
        wanted = [t for t in topics if t in set(admin.list_topics())]
        described = admin.describe_topics(wanted) if wanted else []
        return {d.get("name") or d["topic"]: len(d["partitions"]) for d in described}  # "topic" before 2.3
    finally:
        admin.close()


def producer(bootstrap: str, security: Security = None) -> KafkaProducer:
    return KafkaProducer(
        **(security or {}),
        bootstrap_servers=bootstrap,
        linger_ms=20,
        batch_size=256 * 1024,
        acks=1,
        max_request_size=4 * 1024 * 1024,
        enable_idempotence=False,  # the embedded broker has no InitProducerId; at-least-once is the contract
    )


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes]],
    rate: float | None = None,
    progress: Callable[[int], None] | None = None,
    security: Security = None,
) -> int:
    """Send (key, value) records, at most ``rate`` per second when given; returns how many were sent."""
    prod = producer(bootstrap, security)
    sent = 0
    started = time.monotonic()
    last_report = started
    try:
        for key, value in records:
            prod.send(topic, key=key, value=value)
            sent += 1
            if rate:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0.005:
                    time.sleep(ahead)
            if progress and time.monotonic() - last_report >= 1.0:
                last_report = time.monotonic()
                progress(sent)
        prod.flush(60)
    finally:
        prod.close(10)
    if progress:
        progress(sent)
    return sent


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


def read_all(bootstrap: str, topic: str, timeout: float = 30.0, security: Security = None) -> list[Record]:
    """Every record currently in ``topic`` (up to the end offsets at call time), without a consumer group."""
    return list(read_each(bootstrap, topic, timeout, security))


def read_each(bootstrap: str, topic: str, timeout: float = 30.0, security: Security = None) -> Iterator[Record]:
    """The records of :func:`read_all` as they are fetched (each partition's in offset order), for a topic too
    large to hold; ``timeout``: seconds without a record before it gives up (however long the whole read)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        consumer_timeout_ms=1000,
        **(security or {}),
    )
    try:
        deadline = time.monotonic() + timeout
        parts = None
        while parts is None:
            parts = consumer.partitions_for_topic(topic)
            if parts is None:
                if time.monotonic() > deadline:
                    raise BrokerError(f"topic {topic} not found")
                time.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        end = true_end_offsets(consumer, tps)
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise BrokerError(f"timed out reading {topic}")
            for tp, msgs in consumer.poll(timeout_ms=500).items():
                deadline = time.monotonic() + timeout
                for m in msgs:
                    yield Record(tp.partition, m.offset, m.key, m.value, {k: v for k, v in (m.headers or [])})
    finally:
        consumer.close()


def true_end_offsets(
    consumer: KafkaConsumer, tps: list[TopicPartition], timeout: float = 10.0
) -> dict[TopicPartition, int]:
    """The offset after each partition's last record. Some brokers' ListOffsets answer the base offset of the last
    record batch plus one instead (the embedded Tansu broker does); a fetch response's high watermark is exact, so
    each partition with records is fetched once from its reported end and the high watermark taken."""
    reported = consumer.end_offsets(tps)
    ends = dict(reported)
    pending = {tp for tp in tps if reported[tp] > 0}
    if not pending:
        return ends
    consumer.unsubscribe()  # a consumer used before keeps each partition's last high watermark through assign()
    consumer.assign(sorted(pending, key=lambda tp: (tp.topic, tp.partition)))
    for tp in pending:
        consumer.seek(tp, reported[tp] - 1)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        consumer.poll(timeout_ms=200)  # the records are not needed: each fetch response carries the high watermark
        for tp in list(pending):
            highwater = consumer.highwater(tp)
            if highwater is not None:
                ends[tp] = max(ends[tp], highwater)
                pending.discard(tp)
    return ends


def group_lag(bootstrap: str, group: str, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    """Records not yet committed by consumer ``group``, per (topic, partition) of ``topics`` (a partition the group
    never committed counts from its start)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="segment-worker-admin")
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        fetched = admin.list_group_offsets({group: tps}).get(group, {})
        committed = {tp: meta.offset for tp, meta in fetched.items()}
        starts = consumer.beginning_offsets(tps)
        ends = true_end_offsets(consumer, tps)
        return {(tp.topic, tp.partition): ends[tp] - max(starts[tp], committed.get(tp, -1)) for tp in tps}
    finally:
        consumer.close()
        admin.close()
