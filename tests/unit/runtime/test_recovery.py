"""Reading a changelog to its real end, with and without a local copy, against a fake consumer that behaves like
the embedded broker (it reports the start of the last record batch as the end offset)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
from aiokafka import TopicPartition

from worker import codec
from worker.localstore import LocalStore
from worker.runtime.recovery import ChangelogReader, changelog_key_decoder, changelog_key_encoder

TOPIC = "app-users-changelog"
BATCH = 3  # records per fetched batch (a fetch returns whole batches)


@dataclass
class Rec:
    partition: int
    offset: int
    key: bytes
    value: bytes | None


class FakeLog:
    """Changelog partitions (offset = index) as a broker serves them."""

    def __init__(self, records: dict[int, list[tuple[str, bytes | None]]], start: int = 0) -> None:
        self.records = {p: [Rec(p, i, codec.dumps(k), v) for i, (k, v) in enumerate(rs)] for p, rs in records.items()}
        self.start = start  # the first offset retention left in every partition

    def consumer(self, **config: Any) -> FakeConsumer:
        return FakeConsumer(self)


class FakeConsumer:
    def __init__(self, log: FakeLog) -> None:
        self.log = log
        self.positions: dict[TopicPartition, int] = {}

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def assign(self, tps: list[TopicPartition]) -> None:
        self.positions = dict.fromkeys(tps, 0)

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        # like the embedded broker: the start of the last batch, not the offset after the last record
        out = {}
        for tp in tps:
            n = len(self.log.records[tp.partition])
            out[tp] = n if n == 0 else (n - 1) // BATCH * BATCH
        return out

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, self.log.start)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    async def getmany(self, *tps: TopicPartition, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Rec]]:
        out = {}
        for tp in tps:
            at = self.positions[tp]
            batch_start = at // BATCH * BATCH  # the whole batch holding the position, then what follows it
            records = [r for r in self.log.records[tp.partition][batch_start : batch_start + BATCH] if r.offset >= at]
            if records:
                out[tp] = records
                self.positions[tp] = records[-1].offset + 1
        return out


@dataclass
class FakeStore:
    data: dict[Any, bytes] = field(default_factory=dict)
    _key_partition: dict[Any, int] = field(default_factory=dict)


class FakeTable:
    key_serializer = "json"
    key_type = str

    def __init__(self, name: str) -> None:
        self.name = name
        self.data = FakeStore()
        self.changelog_topic = self

    def get_topic_name(self) -> str:
        return TOPIC


def read(log: FakeLog, table: FakeTable, partitions: set[int], local: LocalStore | None = None, **kw: Any) -> Any:
    kept = frozenset({table.name}) if local is not None else frozenset()
    reader = ChangelogReader(None, "unused:9092", "read_uncommitted", local, kept, consumer=log.consumer)  # type: ignore[arg-type]
    return asyncio.run(reader.read(table, partitions, **kw))


LOG = {
    0: [("a", b"1"), ("b", b"1"), ("a", b"2"), ("c", b"1"), ("b", None), ("d", b"1"), ("e", b"1")],
    1: [("x", b"1")],
}


def test_every_partition_read_past_the_reported_end_the_last_record_per_key_winning() -> None:
    table = FakeTable("users")
    assert read(FakeLog(LOG), table, {0, 1}) == (0, 8)
    assert table.data.data == {"a": b"2", "c": b"1", "d": b"1", "e": b"1", "x": b"1"}  # b deleted by its tombstone
    assert table.data._key_partition == {"a": 0, "c": 0, "d": 0, "e": 0, "x": 1}
    tail = FakeTable("models")
    # the last two records before the reported end (offset 6), and on to the real end: offsets 4..6
    assert read(FakeLog(LOG), tail, {0}, tail=2) == (0, 3)
    assert tail.data.data == {"d": b"1", "e": b"1"}
    assert read(FakeLog(LOG), FakeTable("none"), set()) == (0, 0)


def test_a_local_copy_then_the_changelog_after_it(tmp_path: Path) -> None:
    local = LocalStore(tmp_path / "copy")
    first = FakeTable("users")
    read(FakeLog({0: LOG[0][:4]}), first, {0}, local)  # the copy now holds offsets 0..3
    table = FakeTable("users")
    assert read(FakeLog(LOG), table, {0}, local) == (3, 4)  # a, b, c from the copy; offsets 3..6 from the log
    assert table.data.data == {"a": b"2", "c": b"1", "d": b"1", "e": b"1"}
    local.close()


def test_a_copy_the_changelog_does_not_continue_is_discarded(tmp_path: Path) -> None:
    local = LocalStore(tmp_path / "copy")
    read(FakeLog({0: LOG[0][:4]}), FakeTable("users"), {0}, local)
    other = {0: [("a", b"9"), ("z", b"1"), ("q", b"1"), ("r", b"1"), ("s", b"1")]}  # a topic made again
    table = FakeTable("users")
    assert read(FakeLog(other), table, {0}, local) == (0, 5)
    assert table.data.data == {"a": b"9", "z": b"1", "q": b"1", "r": b"1", "s": b"1"}
    # retention removed what the copy lacks: the log starts after the copy's end
    table = FakeTable("users")
    assert read(FakeLog(other, start=5), table, {0}, local)[0] == 0
    assert table.data.data == {}
    local.close()


def test_changelog_keys_are_the_bytes_faust_writes_and_reads() -> None:
    """The direct key codec of the user and meta tables (JSON string keys) agrees with Faust's serializer registry
    byte for byte: a key written differently would be a second key to the changelog's compaction."""
    app = faust.App(f"keys-{uuid.uuid4().hex[:8]}", broker="kafka://127.0.0.1:1")
    table = app.Table("users", key_type=str, value_type=bytes)
    encode, decode = changelog_key_encoder(app, table), changelog_key_decoder(app, table)
    assert encode is codec.dumps and decode is codec.loads  # the direct path is taken
    for key in ["u1", "user-12345", 'quo"te', "back\\slash", "tab\there", "\x00\x1f", "naïve", "日本", "🙂", "a/b", ""]:
        assert encode(key) == app.serializers.dumps_key(str, key, serializer=table.key_serializer)
        assert decode(encode(key)) == key == app.serializers.loads_key(str, encode(key), serializer="json")
    numbered = app.Table("numbered", key_type=int, value_type=bytes)  # any other key: Faust's own codec
    assert changelog_key_encoder(app, numbered)(7) == app.serializers.dumps_key(int, 7, serializer="json") == b"7"
