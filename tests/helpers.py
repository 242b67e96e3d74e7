"""Helpers shared by the integration tests."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka.admin import AdminClient, ConfigResource

from worker import codec
from worker.kafkaio import Record, read_all
from worker.process import WorkerProcess
from worker.topics import TopicSpec


def wait_for_records(
    bootstrap: str, topic: str, done: Callable[[list[Record]], bool], timeout: float = 120.0, what: str = ""
) -> list[Record]:
    """Read ``topic`` until ``done`` holds for its records (what the broker acknowledged, not what a counter says
    was queued); fails with what it last saw."""
    deadline = time.monotonic() + timeout
    while True:
        records = read_all(bootstrap, topic)
        if done(records):
            return records
        assert time.monotonic() < deadline, f"{topic}: {what or 'condition'} not met; last saw {len(records)} records"
        time.sleep(1.0)


def poll_until(get: Callable[[], Any], done: Callable[[Any], bool], timeout: float, what: str) -> Any:
    """Call ``get`` until ``done`` holds for its value; fails with the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"{what} not met after {timeout:.0f}s; last saw {value!r}"[:2000]
        time.sleep(0.5)


def holds_for(get: Callable[[], Any], holds: Callable[[Any], bool], seconds: float, what: str) -> Any:
    """Call ``get`` for ``seconds``: ``holds`` must be true of every value (what must not happen, watched over a
    window rather than checked once after a sleep)."""
    deadline = time.monotonic() + seconds
    while True:
        value = get()
        assert holds(value), f"{what} broken; saw {value!r}"[:2000]
        if time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def serving_metrics(process: WorkerProcess) -> dict[str, float]:
    """The process's metrics, or none while it is not serving yet."""
    try:
        return process.metrics()
    except OSError:
        return {}


def assert_topic_configs(bootstrap: str, specs: tuple[TopicSpec, ...]) -> None:
    """Each topic as the broker describes it (read by a third-party client, librdkafka) holds the configs its spec
    asks for: ``cleanup.policy=compact`` for state topics, ``retention.ms`` where one is set (which specs ask for
    what is pinned by tests/unit/test_topics.py)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.describe_configs([ConfigResource("topic", spec.name) for spec in specs])
    got = {res.name: {k: v.value for k, v in f.result(timeout=30).items()} for res, f in futures.items()}
    wanted = {spec.name: spec.configs for spec in specs}
    assert {name: {k: got[name].get(k) for k in configs} for name, configs in wanted.items()} == wanted


def latest_changes(records: list[Record]) -> dict[str, dict[str, Any]]:
    """Each user's last change, after checking every chain: sequences 1..n, each from where the last one went."""
    chains: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        change = codec.loads(r.value or b"{}")
        assert r.key == change["user_id"].encode()
        chains.setdefault(change["user_id"], []).append(change)
    for uid, chain in chains.items():
        chain.sort(key=lambda c: c["sequence"])
        assert [c["sequence"] for c in chain] == list(range(1, len(chain) + 1)), uid
        assert all(a["to_segment"] == b["from_segment"] for a, b in itertools.pairwise(chain)), uid
    return {uid: chain[-1] for uid, chain in chains.items()}
