"""Helpers shared by the integration tests: waiting on what the broker acknowledged, producing events, reading
change chains, the trigger service, the shared schemas and bad records."""

from __future__ import annotations

import itertools
import json
import re
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
from confluent_kafka.admin import AdminClient, ConfigResource
from kafka import KafkaConsumer, TopicPartition

from worker import codec
from worker.broker import free_port
from worker.kafkaio import Record, create_topics, produce, read_all, true_end_offsets
from worker.process import WorkerProcess, metric_total
from worker.settings import Settings
from worker.topics import TopicSpec

# what a worker logs after reading a partition's users (its local copy's count last)
READ_LINE = re.compile(r"users: (\d+) changelog records of partitions \[[\d, ]+\] read in [\d.]+s after (\d+) from")


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


class TopicTail:
    """A topic read from its start and kept: each :meth:`read` fetches only what was added since the last one, up
    to the end as of the call (as :func:`worker.kafkaio.read_all` would return, without reading it all again)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.ends = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
        self.reader = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
        parts = self.reader.partitions_for_topic(topic) or set()
        assert parts, f"topic {topic} not found"
        self.tps = [TopicPartition(topic, p) for p in sorted(parts)]
        self.reader.assign(self.tps)
        self.reader.seek_to_beginning(*self.tps)
        self.records: list[Record] = []

    def read(self, timeout: float = 60.0) -> list[Record]:
        end = true_end_offsets(self.ends, self.tps)
        deadline = time.monotonic() + timeout
        while any(self.reader.position(tp) < end[tp] for tp in self.tps):
            assert time.monotonic() < deadline, f"timed out reading {self.tps[0].topic}"
            for tp, msgs in self.reader.poll(timeout_ms=500).items():
                self.records += [Record(tp.partition, m.offset, m.key, m.value, dict(m.headers or [])) for m in msgs]
        return self.records

    def close(self) -> None:
        self.ends.close()
        self.reader.close()


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


def send_changes(s: Settings, changes: list[dict[str, Any]]) -> None:
    """Keyed by user id, as the worker writes them (the default partitioner is the worker's)."""
    produce(s.bootstrap_servers, s.output_topic, [(c["user_id"].encode(), codec.dumps(c)) for c in changes])


def start_service(s: Settings, rules_file: Path, log: Path) -> WorkerProcess:
    """``segment-worker triggers`` with these settings; its API (metrics, /campaigns) on ``triggers_web_port``."""
    return WorkerProcess(s, {}, log, command=("triggers", "--rules", str(rules_file)), port=s.triggers_web_port)


def service_setup(worker_settings: Settings, tmp_path: Path, rules: str, **settings: Any) -> tuple[Settings, Path]:
    """Settings of a trigger service on the test's topics (its own notifications topic and port), its rules file."""
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(rules)
    s = worker_settings.replace(
        notifications_topic=f"{worker_settings.app_id}-notifications", triggers_web_port=free_port(), **settings
    )
    create_topics(s.bootstrap_servers, {s.notifications_topic: s.partitions})  # to read it before the service runs
    return s, rules_file


def local_reads(worker: WorkerProcess) -> list[tuple[int, int]]:
    """(records from the changelog, records from the local copy) of each recovery of the users table."""
    return [(int(a), int(b)) for a, b in READ_LINE.findall(worker.log_path.read_text())]


SCHEMAS = Path(__file__).parents[1] / "schemas"


CHANGE_SCHEMA = json.loads((SCHEMAS / "segment-change.v1.json").read_text())


EVENT_SCHEMA = json.loads((SCHEMAS / "user-event.v1.json").read_text())


FUTURE = 4_102_444_800_000  # 2100-01-01


BAD = {
    b"{not json": "not_json",
    b"": "empty",
    b'{"user_id": "x", "event_type": "v", "timestamp": 1767225600000, "pad": "' + b"x" * 70_000 + b'"}': "oversize",
    b'{"user_id": "x", "event_type": "v", "timestamp": 1767225600000, "value": NaN}': "non_finite_number",
    b'["user_id", "x"]': "not_object",
    b'{"event_type": "v", "timestamp": 1767225600000}': "missing_field",
    b'{"user_id": ["x"], "event_type": "v", "timestamp": 1767225600000}': "invalid_field",
    b'{"user_id": "x", "event_type": "v", "timestamp": "2026-13-45T99:00:00Z"}': "bad_timestamp",
    b'{"user_id": "x", "event_type": "v", "timestamp": %d}' % FUTURE: "timestamp_in_future",
}


def wait_for(worker: WorkerProcess, cond: Any, timeout: float = 120.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        m = worker.metrics()
        if cond(m):
            return m
        assert worker.proc.poll() is None, f"worker died, see {worker.log_path}"
        assert time.monotonic() < deadline, f"timed out; last metrics {m}"
        time.sleep(0.5)


def processed(n: int) -> Any:
    """``n`` events applied and their outputs acknowledged by the broker (not merely queued): what a test may read
    back from the topics once this holds."""
    return lambda m: metric_total(m, "segment_worker_events_settled_total") >= n


def delivered(topic: str, n: int) -> Any:
    """At least ``n`` output records acknowledged on ``topic``."""
    return lambda m: m.get(f"segment_worker_outputs_delivered_total|topic={topic}", 0) >= n


def send(settings: Settings, events: list[dict[str, Any]], wrong_key_every: int = 0) -> None:
    records = []
    for i, e in enumerate(events):
        key = e["user_id"].encode()
        if wrong_key_every and i % wrong_key_every == 0:
            key = b"not-the-user" if i % 2 else None
        records.append((key, codec.dumps(e)))
    produce(settings.broker.removeprefix("kafka://"), settings.input_topic, records)


def read_chains(bootstrap: str, topic: str, schema: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """A topic's records per user id, each valid against ``schema``; an ``event_id`` seen twice (a re-emission)
    must have one content."""
    content: dict[str, bytes] = {}
    chains: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in read_all(bootstrap, topic):
        doc = codec.loads(r.value)
        jsonschema.validate(doc, schema)
        assert content.setdefault(doc["event_id"], codec.dumps(doc)) == codec.dumps(doc), doc["event_id"]
        chains[doc["user_id"]].append(doc)
    return chains
