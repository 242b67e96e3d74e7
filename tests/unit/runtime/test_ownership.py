"""Assignment changes without a broker: gained partitions read from the changelog, gates reopened where the state
says (or at the start of the log), lost partitions' keys dropped, an assignment beyond the plan refused."""

from __future__ import annotations

import asyncio

from tests.fakes import Assigned, FakeChangelog, FakeProducer, FakeTopics
from worker import codec
from worker.changes import Segmenter
from worker.features import wire
from worker.outbox import Outbox
from worker.routing import partitioner
from worker.runtime import faust_internals as fi
from worker.runtime import topology
from worker.runtime.ownership import meta_keys
from worker.runtime.positions import Positions
from worker.runtime.records import BY_USER, ERASURES, INPUT
from worker.settings import Settings

S = Settings(partitions=4, app_id="unit", input_topic="events", erasure_topic="erasures")


async def beginning(topic: str, partitions: list[int]) -> dict[int, int]:
    return dict.fromkeys(partitions, 100)  # retention left the logs starting at 100


def build() -> tuple[Assigned, topology.Topology, FakeChangelog, FakeTopics]:
    topo = topology.build(S, with_memberships=False)
    segmenter = Segmenter(S, wire.EncodedStates(fi.values(topo.users)), partitioner(S.partitions))
    changelog, topics = FakeChangelog(), FakeTopics()
    outbox = Outbox(FakeProducer().send_all)
    positions = Positions(topo.stream_topics)
    own = Assigned(S, topo, changelog, positions, segmenter, outbox, topics, beginning)  # type: ignore[arg-type]
    return own, topo, changelog, topics


def test_gained_partitions_read_and_reopened_where_the_state_says() -> None:
    own, topo, changelog, _ = build()
    topo.stage(topo.part_meta, meta_keys(S.partitions)[1], codec.dumps({"max_ts": 5, INPUT: 42, BY_USER: 7}))
    own.partitions = {0, 1}
    gained = asyncio.run(own.refresh())
    assert gained == {0, 1} and own.owned == {0, 1}
    assert changelog.reads == [
        ("users", [0, 1], None),
        ("partition-meta", [0, 1], None),
        ("models", [0], 5000),  # once: every worker holds the one model partition
    ]
    assert sorted(own.positions.current()) == [
        (BY_USER, 0, 100),
        (BY_USER, 1, 7),
        (ERASURES, 0, 100),  # never consumed here: from the start of the log
        (ERASURES, 1, 100),
        (INPUT, 0, 100),
        (INPUT, 1, 42),
    ]
    assert asyncio.run(own.refresh()) == set() and len(changelog.reads) == 3  # nothing changed, nothing read

    on_1 = next(u for u in (f"user-{i}" for i in range(100)) if partitioner(S.partitions)(u) == 1)
    topo.stage(topo.users, on_1, b"state")
    assert fi.key_partitions(topo.users)[on_1] == 1
    own.partitions = {2}  # a rebalance moved 0 and 1 away, brought 2
    own.revoked()
    assert asyncio.run(own.refresh()) == {2} and own.owned == {2}
    assert on_1 not in fi.values(topo.users) and on_1 not in fi.key_partitions(topo.users)  # its partition left
    assert {p for _, p, _ in own.positions.current()} == {2}


def test_an_assignment_beyond_the_planned_partitions_is_refused() -> None:
    own, _, changelog, topics = build()
    own.partitions = {3, 4, 5}  # the input topic has more partitions than PARTITIONS
    assert asyncio.run(own.refresh()) == set()
    assert own.owned == set() and changelog.reads == []
    assert topics.flagged == ["events partitions [4, 5] assigned, beyond 4 (SEGMENT_WORKER_PARTITIONS)"]
