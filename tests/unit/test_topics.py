from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from worker import metrics
from worker.errors import TopicError
from worker.settings import Settings
from worker.topics import (
    StallClock,
    TopicSpec,
    TopicWatch,
    create_command,
    ensure_topics,
    problems,
    trigger_topics,
    worker_topics,
)

S = Settings(partitions=6, app_id="shop")


class FakeAdmin:
    """Topics as a dict of partition counts; ``refuse`` makes creation fail for those names, ``racer`` makes a
    topic appear (with its count) between the description and the creation."""

    def __init__(self, topics: dict[str, int], refuse: Sequence[str] = (), racer: dict[str, int] | None = None) -> None:
        self.topics = dict(topics)
        self.refuse = set(refuse)
        self.racer = racer or {}
        self.created: list[str] = []
        self.waiting_answer: dict[int, tuple[int, int]] = {}

    def partitions(self, names: Sequence[str]) -> dict[str, int | None]:
        return {n: self.topics.get(n) for n in names}

    def create(self, specs: Sequence[TopicSpec], replication: int) -> tuple[list[str], dict[str, str]]:
        self.topics.update(self.racer)
        created, refused = [], {}
        for spec in specs:
            if spec.name in self.refuse:
                refused[spec.name] = "TopicAuthorizationFailedError: not allowed"
            elif spec.name not in self.topics:
                self.topics[spec.name] = spec.partitions
                created.append(spec.name)
        self.created += created
        return created, refused

    def waiting(self, group: str, topic: str, partitions: int) -> dict[int, tuple[int, int]]:
        return self.waiting_answer

    def close(self) -> None:
        pass


def test_the_worker_topics_are_the_ones_its_app_uses() -> None:
    from worker.app import create_app

    s = S.replace(segment_rules="", data_dir="/nonexistent")
    app = create_app(s)
    used = {t.changelog_topic.get_topic_name() for t in app.tables.values()}
    used |= {name for agent in app.agents.values() for name in agent.channel.topics}  # what the agents read
    used.add(f"{s.app_id}-__assignor-__leader")
    planned = {spec.name for spec in worker_topics(s)}
    assert used <= planned
    assert planned - used == {s.output_topic, s.dlq_topic, s.persona_topic}  # written only


def test_partition_rules_per_topic() -> None:
    specs = {spec.name: spec for spec in worker_topics(S.replace(segment_rules="rules.yaml"))}
    exact = {name for name, spec in specs.items() if spec.exact}
    assert exact == {
        "user-events",
        "user-erasures",
        "segment-changes",
        "shop-events-by-user",
        "shop-users-changelog",
        "shop-partition-meta-changelog",
    }
    assert all(specs[name].partitions == 6 for name in exact)
    assert {name for name, spec in specs.items() if spec.compacted} == {
        "shop-users-changelog",
        "shop-partition-meta-changelog",
        "shop-models-changelog",
    }
    assert specs["shop-training-samples"].configs == {"retention.ms": str(7 * 86_400_000)}
    assert not specs["segment-memberships"].exact and not specs["user-events-dlq"].exact
    assert "segment-memberships" not in {spec.name for spec in worker_topics(S)}


def test_trigger_topics_share_the_changes_partitioning() -> None:
    without = {spec.name: spec for spec in trigger_topics(S, goals=False)}
    assert set(without) == {"segment-changes", "shop-triggers-state", "notifications", "notifications-dlq"}
    assert without["shop-triggers-state"].exact and without["shop-triggers-state"].compacted
    assert not without["notifications"].exact
    with_goals = {spec.name for spec in trigger_topics(S, goals=True)}
    assert with_goals - set(without) == {"user-events", "shop-events-by-user"}


def test_problems_missing_and_mispartitioned() -> None:
    specs = worker_topics(S)
    counts: dict[str, int | None] = {spec.name: spec.partitions for spec in specs}
    assert problems(specs, counts) == []
    counts |= {"user-events": 4, "user-events-dlq": 1, "shop-training-samples": 3, "segment-changes": None}
    found = {p.spec.name: p.found for p in problems(specs, counts)}
    assert found == {"user-events": 4, "segment-changes": None}
    texts = [str(p) for p in problems(specs, counts)]
    assert "user-events has 4 partitions, expected 6" in texts[0]
    assert "SEGMENT_WORKER_PARTITIONS=6" in texts[0]
    assert "segment-changes does not exist" in texts[1] and "SEGMENT_WORKER_OUTPUT_TOPIC" in texts[1]


def test_ensure_creates_only_the_missing_topics() -> None:
    specs = worker_topics(S)
    admin = FakeAdmin({"user-events": 6, "user-events-dlq": 1})
    created = ensure_topics(admin, specs, 3, "kafka:9092")
    assert set(created) == {spec.name for spec in specs} - {"user-events", "user-events-dlq"}
    assert admin.created == created
    assert ensure_topics(admin, specs, 3, "kafka:9092") == []


def test_ensure_refuses_a_mispartitioned_topic_before_creating_anything() -> None:
    admin = FakeAdmin({"user-events": 4, "segment-changes": 2})
    with pytest.raises(TopicError) as err:
        ensure_topics(admin, worker_topics(S), 1, "kafka:9092")
    said = str(err.value)
    assert "2 topics not as the worker needs them" in said
    assert "user-events has 4 partitions, expected 6" in said and "segment-changes has 2 partitions" in said
    assert admin.created == []


def test_ensure_names_each_topic_the_broker_refused_with_the_command_that_makes_it() -> None:
    admin = FakeAdmin({}, refuse=["user-events", "shop-users-changelog"])
    with pytest.raises(TopicError) as err:
        ensure_topics(admin, worker_topics(S), 3, "kafka:9092")
    said = str(err.value)
    assert "user-events does not exist" in said and "TopicAuthorizationFailedError" in said
    assert (
        "kafka-topics.sh --bootstrap-server kafka:9092 --create --topic shop-users-changelog --partitions 6 "
        "--replication-factor 3 --config cleanup.policy=compact"
    ) in said
    assert "segment-changes" not in said  # created


def test_ensure_a_topic_auto_created_in_between_is_checked_like_any() -> None:
    admin = FakeAdmin({}, racer={"segment-changes": 4})
    with pytest.raises(TopicError, match="segment-changes has 4 partitions, expected 6"):
        ensure_topics(admin, worker_topics(S), 1, "kafka:9092")
    admin = FakeAdmin({}, racer={"user-events-dlq": 4})  # any count: fine
    assert "user-events-dlq" not in ensure_topics(admin, worker_topics(S), 1, "kafka:9092")


def test_create_command() -> None:
    spec = TopicSpec("x", 3, True, "role", "SEGMENT_WORKER_APP_ID", compacted=True, retention=60.0)
    assert create_command(spec, "b:1", 2) == (
        "kafka-topics.sh --bootstrap-server b:1 --create --topic x --partitions 3 --replication-factor 2 "
        "--config cleanup.policy=compact --config retention.ms=60000"
    )


def test_watch_reports_problems_until_mended() -> None:
    specs = worker_topics(S)
    admin = FakeAdmin({spec.name: spec.partitions for spec in specs})
    admin.waiting_answer = {0: (10, 0), 1: (5, 7)}
    watch = TopicWatch(specs, lambda: admin, "shop", "shop-events-by-user", 6)
    asyncio.run(watch.check())
    assert watch.ok and metrics.TOPIC_PROBLEMS._value.get() == 0
    assert metrics.REROUTED_WAITING.labels("1")._value.get() == 7
    admin.topics["user-events"] = 9
    asyncio.run(watch.check())
    assert not watch.ok and watch.found == [
        "user-events has 9 partitions, expected 6 (user events (read); SEGMENT_WORKER_PARTITIONS=6)"
    ]
    assert metrics.TOPIC_PROBLEMS._value.get() == 1
    watch.flag("user-events partitions [6, 7, 8] assigned")
    assert metrics.TOPIC_PROBLEMS._value.get() == 2
    admin.topics["user-events"] = 6
    asyncio.run(watch.check())
    assert watch.ok and watch.found == [] and metrics.TOPIC_PROBLEMS._value.get() == 0


def test_watch_keeps_its_finding_when_the_broker_cannot_be_asked() -> None:
    class Unreachable(FakeAdmin):
        def partitions(self, names: Sequence[str]) -> dict[str, int | None]:
            raise OSError("connection refused")

    watch = TopicWatch(worker_topics(S), lambda: Unreachable({}), "shop", "shop-events-by-user", 6)
    watch.update(["user-events has 9 partitions"])
    asyncio.run(watch.check())
    assert watch.found == ["user-events has 9 partitions"]


def test_stall_clock_counts_while_the_position_stands_still_with_records_waiting() -> None:
    clock = StallClock()
    assert clock.observe(0, 100, 5, now=0.0) == 0.0
    assert clock.observe(0, 100, 9, now=30.0) == 30.0
    assert clock.observe(0, 104, 5, now=40.0) == 0.0  # the position moved: a new wait begins
    assert clock.observe(0, 104, 5, now=50.0) == 10.0
    assert clock.observe(0, 109, 0, now=60.0) == 0.0  # nothing waits
    assert clock.observe(0, 109, 3, now=70.0) == 0.0
    assert clock.observe(1, -1, 0, now=70.0) == 0.0
