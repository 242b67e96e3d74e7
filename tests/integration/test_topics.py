"""The worker against a broker as users meet it: an empty broker, the worker started first with default settings,
a plain producer after; topics made by someone else with other partition counts; a topic auto-created by a
client racing the worker; a topic whose partition count changes while the worker runs; a third-party client
(confluent-kafka, librdkafka) reading the changes in a consumer group."""

from __future__ import annotations

import importlib.util
import os
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from tests.helpers import TopicTail, assert_topic_configs, holds_for, latest_changes, poll_until, wait_for_records
from worker import codec
from worker.kafkaio import create_topics, partition_counts
from worker.process import WorkerProcess, metric_total
from worker.settings import Settings
from worker.topics import worker_topics

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[2]


def cdnow_master() -> list[bytes]:
    """CDNOW's full purchase log (69,659 purchases of 23,570 customers, 1997-01 to 1998-06) as user events."""
    spec = importlib.util.find_spec("lifetimes")
    assert spec is not None and spec.submodule_search_locations
    source = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "CDNOW_master.txt"
    out = []
    for line in source.read_text().splitlines():
        parts = line.split()
        if len(parts) != 4 or not parts[1].isdigit():
            continue
        customer, day, cds, value = parts
        ts = f"{day[:4]}-{day[4:6]}-{day[6:]}T12:00:00Z"
        event = {"user_id": f"cdnow-{customer}", "event_type": "purchase", "timestamp": ts, "value": float(value)}
        out.append(codec.dumps({**event, "properties": {"cds": int(cds)}}))
    return out


def malformed(i: int) -> bytes:
    """Records no parser may apply, of eight kinds."""
    event = {"user_id": f"cdnow-bad-{i}", "event_type": "purchase", "timestamp": "1997-03-01T12:00:00Z"}
    kinds = [
        b"{not json at all",
        b"",
        codec.dumps([event]),
        codec.dumps({k: v for k, v in event.items() if k != "user_id"}),
        codec.dumps({**event, "timestamp": "the day after tomorrow"}),
        codec.dumps({**event, "event_type": 42}),
        codec.dumps({**event, "timestamp": "2999-01-01T00:00:00Z"}),
        codec.dumps(event)[:-1] + b',"value":1e999}',
    ]
    return kinds[i % len(kinds)]


def plain_produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """What a user's producer does: kafka-python with its defaults, no key."""
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        for value in values:
            producer.send(topic, value)
        producer.flush(60)
    finally:
        producer.close(10)


def topic_names(bootstrap: str) -> set[str]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def read_with_confluent(
    bootstrap: str, topic: str, group: str, covering: set[tuple[int, int]], timeout: float = 90.0
) -> list[Any]:
    """Records of ``topic`` read by a confluent-kafka (librdkafka) consumer group, until they cover the
    ``covering`` (partition, offset) positions."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        missing = set(covering)
        while missing:
            assert time.monotonic() < deadline, f"confluent-kafka did not read {len(missing)} records of {topic}"
            for message in consumer.consume(num_messages=5000, timeout=1.0):
                assert message.error() is None, message.error()
                out.append(message)
                missing.discard((message.partition(), message.offset()))
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return out


def test_empty_broker_worker_first_then_a_plain_producer(bare_settings: Settings, start_worker: Any) -> None:
    s = bare_settings
    bootstrap = s.bootstrap_servers
    specs = worker_topics(s)
    assert not {spec.name for spec in specs} & topic_names(bootstrap)
    worker = start_worker(s)
    # the worker made its whole topic set before any client could auto-create a part of it
    counts = partition_counts(bootstrap, [spec.name for spec in specs])
    assert counts == {spec.name: spec.partitions for spec in specs}
    assert worker.get("/readyz")["topic_problems"] == []
    assert_topic_configs(bootstrap, specs)  # state topics compacted, training samples with their retention

    events = cdnow_master()
    users = {codec.loads(e)["user_id"] for e in events}
    assert (len(events), len(users)) == (69_659, 23_570)
    bad = [malformed(i) for i in range(200)]
    stream = list(events)
    rng = random.Random(16)
    for record in bad:
        stream.insert(rng.randrange(len(stream) + 1), record)
    plain_produce(bootstrap, s.input_topic, stream)

    dead = wait_for_records(bootstrap, s.dlq_topic, lambda rs: len(rs) >= len(bad), 300, "200 dead letters")
    assert sorted(r.value or b"" for r in dead) == sorted(bad)
    assert {r.headers["dlq.source.topic"] for r in dead} == {s.input_topic.encode()}
    m = poll_until(
        worker.metrics,
        lambda m: metric_total(m, "segment_worker_events_processed_total") >= len(events),
        300,
        "every valid record applied",
    )
    assert metric_total(m, "segment_worker_events_processed_total") == len(events)
    assert metric_total(m, "segment_worker_events_dead_lettered_total") == len(bad)
    assert metric_total(m, "segment_worker_events_duplicate_total") == 0
    assert metric_total(m, "segment_worker_topic_problems") == 0

    # every user the worker placed in a segment has a change chain ending there, and no one else has one (once the
    # first model is in use: its arrival places the waiting users, a burst of changes after the events)
    poll_until(lambda: worker.get("/personas")["model_version"], bool, 240, "a model in use")
    changes = TopicTail(bootstrap, s.output_topic)  # each look reads what was added since the last (~70,000 in all)
    try:
        _changes_agree_with_the_api_and_a_third_party_client(s, worker, changes, users)
    finally:
        changes.close()


def _changes_agree_with_the_api_and_a_third_party_client(
    s: Settings, worker: Any, changes: TopicTail, users: set[str]
) -> None:
    def settled() -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
        sizes = {k.split("segment=")[1]: v for k, v in worker.metrics().items() if "persona_users|" in k}
        return sizes, latest_changes(changes.read())

    def agree(found: tuple[dict[str, float], dict[str, dict[str, Any]]]) -> bool:
        sizes, last = found
        placed = Counter(c["to_segment"] for c in last.values() if c["to_segment"] is not None)
        return bool(placed) and placed == Counter({k: int(v) for k, v in sizes.items() if v})

    _sizes, last = poll_until(settled, agree, 240, "persona sizes equal to the changes' last segments")
    assert set(last) <= users
    sample = random.Random(3).sample(sorted(last), 200)

    def api_then_changes() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        # the API first: a user's state is written after its changes, so a model update placing users again
        # (trigger model_update) can show in the topic before it shows in the API, never the other way round
        api = {uid: worker.get(f"/users/{uid}")["segment"] for uid in sample}
        return api, latest_changes(changes.read())

    poll_until(
        api_then_changes,
        lambda seen: all(seen[0][uid] == seen[1][uid]["to_segment"] for uid in sample),
        120,
        "what the API says of users equal to their last changes",
    )

    # a third-party client (librdkafka) in a consumer group reads the same changes, keyed by user id (the worker
    # may still be writing: a later model update places users again, so each read is compared record by record
    # with what the topic held after it)
    positions = {(r.partition, r.offset) for r in changes.read()}
    seen = read_with_confluent(s.bootstrap_servers, s.output_topic, f"{s.app_id}-confluent", positions)
    after = {(r.partition, r.offset): codec.loads(r.value or b"")["event_id"] for r in changes.read()}
    assert {(m.partition(), m.offset()): codec.loads(m.value())["event_id"] for m in seen}.items() <= after.items()
    read = [(m.partition(), m.offset()) for m in seen]
    assert positions <= set(read) and len(read) == len(set(read))  # all of them, each once
    assert all(m.key() == codec.loads(m.value())["user_id"].encode() for m in seen)


def _run_refused(s: Settings, tmp_path: Path, *command: str) -> str:
    """``segment-worker run`` (or another command) that must refuse to start: its exit code 2 and what it said."""
    proc = subprocess.run(
        [sys.executable, "-m", "worker", *(command or ("run",))],
        env={**s.to_env(), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stderr


def test_output_topics_of_any_count_work(bare_settings: Settings, start_worker: Any, tmp_path: Path) -> None:
    rules = tmp_path / "segments.yaml"
    rules.write_text("segments:\n  buyers: event_count >= 1\n")
    s = bare_settings.replace(partitions=3, warmup_samples=150, k_max=8, segment_rules=str(rules))
    create_topics(s.bootstrap_servers, {s.dlq_topic: 1, s.membership_topic: 2})
    worker = start_worker(s)
    events = [
        codec.dumps({"user_id": f"u{i % 60}", "event_type": "view", "timestamp": 1_767_225_600_000 + i * 60_000})
        for i in range(600)
    ]
    bad = [malformed(i) for i in range(16)]
    plain_produce(s.bootstrap_servers, s.input_topic, events + bad)
    dead = wait_for_records(s.bootstrap_servers, s.dlq_topic, lambda rs: len(rs) >= len(bad), 120, "dead letters")
    assert sorted(r.value or b"" for r in dead) == sorted(bad)
    entered = wait_for_records(s.bootstrap_servers, s.membership_topic, lambda rs: len(rs) >= 60, 120, "60 memberships")
    assert {codec.loads(r.value or b"")["user_id"] for r in entered} == {f"u{i}" for i in range(60)}
    assert {r.partition for r in entered} == {0, 1}  # written by key over the topic's own two partitions
    m = poll_until(
        worker.metrics, lambda m: metric_total(m, "segment_worker_events_processed_total") >= 600, 60, "applied"
    )
    assert metric_total(m, "segment_worker_events_processed_total") == 600
    assert worker.proc.poll() is None and worker.get("/readyz")["ready"]


@pytest.mark.parametrize(
    ("made", "wrong"),
    [
        ({"output": 1}, "output has 1 partition, expected 8"),
        ({"output": 2}, "output has 2 partitions, expected 8"),
        ({"input": 3, "erasure": 8}, "input has 3 partitions, expected 8"),
    ],
)
def test_a_mispartitioned_topic_is_refused_at_start(
    bare_settings: Settings, tmp_path: Path, made: dict[str, int], wrong: str
) -> None:
    """With the default PARTITIONS (8): the change topic made by hand with 1 or 2 partitions, the input with 3."""
    s = bare_settings
    topics = {"output": s.output_topic, "input": s.input_topic, "erasure": s.erasure_topic}
    create_topics(s.bootstrap_servers, {topics[k]: count for k, count in made.items()})
    said = _run_refused(s, tmp_path)
    role, rest = wrong.split(" ", 1)
    assert f"{topics[role]} {rest}" in said
    assert "SEGMENT_WORKER_PARTITIONS" in said and "Traceback" not in said
    # nothing was made on a broker it refused to run against
    assert topic_names(s.bootstrap_servers) & {spec.name for spec in worker_topics(s)} == {topics[k] for k in made}


def test_the_trigger_service_refuses_a_change_topic_partitioned_otherwise(
    bare_settings: Settings, tmp_path: Path
) -> None:
    s = bare_settings
    create_topics(s.bootstrap_servers, {s.output_topic: 8, s.input_topic: 2})
    said = _run_refused(s, tmp_path, "triggers", "--rules", str(ROOT / "deploy" / "triggers" / "rules.yaml"))
    assert f"{s.input_topic} has 2 partitions, expected 8 (goal events (read)" in said
    assert f"{s.app_id}-triggers-state" not in topic_names(s.bootstrap_servers)  # nothing made before the refusal
    create_topics(s.bootstrap_servers, {f"{s.app_id}-triggers-state": 3})
    said = _run_refused(s, tmp_path, "triggers", "--rules", str(ROOT / "deploy" / "triggers" / "rules.yaml"))
    assert f"{s.app_id}-triggers-state has 3 partitions, expected 8" in said


@pytest.mark.parametrize("head_start", [True, False])
def test_a_topic_auto_created_by_a_racing_client(bare_settings: Settings, tmp_path: Path, head_start: bool) -> None:
    """A downstream consumer subscribes to the change topic while the worker starts: the broker auto-creates it
    with its default count (4 here) unless the worker created it first. Either the worker works completely, or it
    refuses to start naming the topic; never a crash mid-stream. With a head start the consumer always wins."""
    s = bare_settings.replace(partitions=3, warmup_samples=150, k_max=8)
    stop = threading.Event()
    polling = threading.Event()

    def subscribe() -> None:
        consumer = KafkaConsumer(s.output_topic, bootstrap_servers=s.bootstrap_servers, group_id=None)
        try:
            while not stop.is_set():
                consumer.poll(timeout_ms=50)
                polling.set()
        finally:
            consumer.close()

    racer = threading.Thread(target=subscribe)
    racer.start()
    try:
        if head_start:
            poll_until(lambda: s.output_topic in topic_names(s.bootstrap_servers), bool, 30, "auto-created")
        else:
            polling.wait(30)
        worker = WorkerProcess(s, dict(os.environ), tmp_path / "worker.log")
        outcome = poll_until(lambda: _started_or_exited(worker), lambda v: v in (2, 200), 90, "started or refused")
    finally:
        stop.set()
        racer.join()
    assert outcome == 2 or not head_start
    count = partition_counts(s.bootstrap_servers, [s.output_topic])[s.output_topic]
    if outcome == 2:
        assert count == 4
        assert f"{s.output_topic} has 4 partitions, expected 3" in worker.log_path.read_text()
        return
    try:
        assert count == 3
        plain_produce(
            s.bootstrap_servers,
            s.input_topic,
            [
                codec.dumps({"user_id": f"u{i % 50}", "event_type": "view", "timestamp": 1_767_225_600_000 + i})
                for i in range(300)
            ],
        )
        m = poll_until(
            worker.metrics, lambda m: metric_total(m, "segment_worker_events_processed_total") >= 300, 60, "applied"
        )
        assert metric_total(m, "segment_worker_events_processed_total") == 300
    finally:
        worker.stop()


def test_a_partition_count_that_changes_while_running(bare_settings: Settings, start_worker: Any) -> None:
    """The embedded broker has no CreatePartitions: the input topic is deleted and made again with more partitions
    (what a hand-made 'fix' does). The worker stops applying and says so: unready, an error log, the metric."""
    s = bare_settings.replace(partitions=3, warmup_samples=150, k_max=8)
    worker = start_worker(s)
    send = [
        codec.dumps({"user_id": f"u{i % 40}", "event_type": "view", "timestamp": 1_767_225_600_000 + i})
        for i in range(200)
    ]
    plain_produce(s.bootstrap_servers, s.input_topic, send)
    m = poll_until(
        worker.metrics, lambda m: metric_total(m, "segment_worker_events_processed_total") >= 200, 60, "applied"
    )
    forwarded = metric_total(m, "segment_worker_events_forwarded_total")
    admin = KafkaAdminClient(bootstrap_servers=s.bootstrap_servers)
    try:
        admin.delete_topics([s.input_topic])
        admin.create_topics({s.input_topic: {"num_partitions": 5, "replication_factor": 1}})
    finally:
        admin.close()
    expected = f"{s.input_topic} has 5 partitions, expected 3"
    body = poll_until(
        lambda: _readyz(worker), lambda b: any(expected in p for p in b.get("topic_problems", [])), 60, "unready"
    )
    assert body["ready"] is False
    m = poll_until(worker.metrics, lambda m: metric_total(m, "segment_worker_ready") == 0, 10, "ready gauge at 0")
    assert metric_total(m, "segment_worker_topic_problems") == 1
    processed = metric_total(m, "segment_worker_events_processed_total")
    plain_produce(s.bootstrap_servers, s.input_topic, send[:50])  # neither applied nor forwarded anywhere
    holds_for(
        worker.metrics,
        lambda m: (
            metric_total(m, "segment_worker_events_processed_total") == processed
            and metric_total(m, "segment_worker_events_forwarded_total") == forwarded
            and metric_total(m, "segment_worker_ready") == 0
        ),
        15,
        "nothing applied or forwarded while the input is mispartitioned",
    )
    assert worker.proc.poll() is None
    log = worker.log_path.read_text()
    assert f"topic problem: {s.input_topic} has 5 partitions, expected 3" in log


def _started_or_exited(worker: WorkerProcess) -> int | None:
    """The worker's exit code once it exited, else its readiness status (None before it listens)."""
    if worker.proc.poll() is not None:
        return worker.proc.returncode
    try:
        return worker.status("/readyz")
    except OSError:
        return None


def _readyz(worker: WorkerProcess) -> dict[str, Any]:
    """/readyz's body, whether ready (200) or not (503)."""
    try:
        with urllib.request.urlopen(worker.base + "/readyz", timeout=5) as resp:
            return dict(codec.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        with exc:  # closes the response's socket
            return dict(codec.loads(exc.read()))
