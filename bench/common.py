"""What the bench scripts share: settings for a worker on the embedded broker, its topics named after the bench."""

from __future__ import annotations

from typing import Any

from worker.broker import EmbeddedBroker, free_port
from worker.settings import Settings


def bench_settings(broker: EmbeddedBroker, name: str, partitions: int, data_dir: str, **overrides: Any) -> Settings:
    """Consumer group ``name``; topics ``name``-events, -changes, -dlq; a free web port; quiet logs."""
    fields: dict[str, Any] = {
        "broker": broker.url,
        "app_id": name,
        "input_topic": f"{name}-events",
        "output_topic": f"{name}-changes",
        "dlq_topic": f"{name}-dlq",
        "partitions": partitions,
        "web_port": free_port(),
        "data_dir": data_dir,
        "log_level": "warn",
    }
    return Settings(**{**fields, **overrides})
