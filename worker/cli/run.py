"""``segment-worker run``: the Faust worker process."""

from __future__ import annotations

from kafka.errors import KafkaError

from worker.errors import BrokerError, ConfigError
from worker.kafkaio import create_topics, partition_counts
from worker.kafkasecurity import kafka_python_config
from worker.settings import Settings


def check_topics(s: Settings) -> None:
    """The erasure topic exists with the input's partitioning: created when missing (a broker's auto-creation would
    give it its default partition count, and requests on partitions no worker reads them from would wait forever);
    refused when an existing input or erasure topic has another partition count than ``partitions``."""
    security = kafka_python_config(s)
    try:
        create_topics(s.bootstrap_servers, {s.erasure_topic: s.partitions}, s.replication_factor, security=security)
        counts = partition_counts(s.bootstrap_servers, [s.input_topic, s.erasure_topic], security)
    except KafkaError as exc:
        raise BrokerError(f"cannot check the topics on {s.broker}: {exc}") from exc
    wrong = {topic: count for topic, count in counts.items() if count != s.partitions}
    if wrong:
        found = ", ".join(f"{topic} has {count}" for topic, count in sorted(wrong.items()))
        raise ConfigError(f"the worker is set to {s.partitions} partitions (SEGMENT_WORKER_PARTITIONS), but {found}")


def run(settings: Settings) -> None:
    from faust.worker import Worker

    from worker.app import create_app

    check_topics(settings)
    app = create_app(settings)
    Worker(app, loglevel=settings.log_level, redirect_stdouts=False).execute_from_commandline()
