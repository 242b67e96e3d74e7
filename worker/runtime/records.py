"""Records in and out of the worker, pure: a consumed record as the core's :class:`InputRecord`, and a batch's
:class:`BatchResult` as the records the outbox sends (re-routed events, dead letters, changes, memberships, training
samples). Header names live here, shared with the trigger service's dead letters."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from worker import codec
from worker.changes import BatchResult, InputRecord
from worker.features.state import UserState
from worker.producing import Record

# a re-routed record names where it first arrived (its offset fence) and, for an erasure request, its kind
H_SRC_PARTITION = "sw.src.partition"
H_SRC_OFFSET = "sw.src.offset"
H_KIND = "sw.kind"  # events carry no kind header
# the consumed streams (metric label, key of their positions in state)
INPUT, BY_USER, ERASURES = "input", "by_user", "erasures"
SAMPLES_PER_RECORD = 500  # training samples per record on the samples topic (about 300 kB)

Headers = list[tuple[str, bytes]]


def input_record(
    stream: str, partition: int, offset: int, key: Any, value: Any, headers: Any, partitions: int, now: float
) -> InputRecord:
    """An input record as the core wants it, from a Faust message or a broker record of any consumed stream.
    A re-routed record without our headers (written by someone else) is fenced on the re-routing topic's own
    coordinates, shifted past the input's partition numbers."""
    if stream == INPUT:
        return InputRecord(value, key, partition, offset, partition, offset, now)
    if stream == ERASURES:
        return InputRecord(value, key, partition, offset, partition, offset, now, "erasure")
    h = dict(headers or ())
    try:
        src_p, src_o = int(h[H_SRC_PARTITION]), int(h[H_SRC_OFFSET])
    except (KeyError, ValueError):
        src_p, src_o = partition + partitions, offset
    kind = "erasure" if h.get(H_KIND) == b"erasure" else "event"
    return InputRecord(value, key, partition, offset, src_p, src_o, now, kind)


def input_records(stream: str, records: Iterable[Any], partitions: int, now: float) -> list[InputRecord]:
    """:func:`input_record` of each fetched record (aiokafka's, or a :class:`worker.kafkaio.Record`), in one
    call: the per-record loop runs inside the compiled core."""
    return [input_record(stream, r.partition, r.offset, r.key, r.value, r.headers, partitions, now) for r in records]


def dead_letter_headers(reason: str, detail: str, topic: str, partition: int, offset: int) -> Headers:
    """Why a record was dead-lettered and where it came from (the dead-letter contract in README)."""
    return [
        ("dlq.reason", reason.encode()),
        ("dlq.detail", detail.encode()),
        ("dlq.source.topic", topic.encode()),
        ("dlq.source.partition", str(partition).encode()),
        ("dlq.source.offset", str(offset).encode()),
    ]


@dataclass(frozen=True)
class OutputTopics:
    """Where a batch's outputs go, and the topics dead letters name as their source."""

    by_user: str
    dlq: str
    changes: str
    memberships: str  # "" without custom segments
    samples: str
    input: str
    erasures: str


class OutputEncoder:
    """A batch's outputs as outbox records, in the order they are sent."""

    def __init__(self, topics: OutputTopics, partition_of: Callable[[str], int]) -> None:
        self.topics = topics
        self.partition_of = partition_of

    def encode(self, res: BatchResult) -> list[Record]:
        t = self.topics
        out: list[Record] = [
            (t.by_user, uid.encode(), rec.value or b"", owner, _rerouted(rec)) for owner, uid, rec in res.forward
        ]
        for d in res.dead:
            r = d.record
            source = t.erasures if r.kind == "erasure" else t.input
            headers = dead_letter_headers(d.reason, d.detail, source, r.src_partition, r.src_offset)
            out.append((t.dlq, r.key, r.value or b"", None, headers))
        out.extend((t.changes, uid.encode(), change, self.partition_of(uid), None) for uid, change, _ in res.changes)
        out.extend((t.memberships, uid.encode(), record, None, None) for uid, _, _, record in res.memberships)
        out.extend((t.samples, None, chunk, 0, None) for chunk in sample_chunks(res.samples))
        return out


def _rerouted(rec: InputRecord) -> Headers:
    headers = [(H_SRC_PARTITION, str(rec.src_partition).encode()), (H_SRC_OFFSET, str(rec.src_offset).encode())]
    if rec.kind == "erasure":
        headers.append((H_KIND, b"erasure"))
    return headers


def sample_chunks(samples: list[bytes]) -> Iterable[bytes]:
    """Training samples as JSON arrays of at most ``SAMPLES_PER_RECORD`` (a large batch stays under the record
    size limit)."""
    for i in range(0, len(samples), SAMPLES_PER_RECORD):
        yield b"[" + b",".join(samples[i : i + SAMPLES_PER_RECORD]) + b"]"


def samples_in(chunk: bytes) -> list[tuple[str, UserState, int]]:
    """The training samples of one record of the samples topic: (sample key, user state, event time)."""
    return [(key, UserState.from_fields(fields), t) for key, fields, t in codec.loads(chunk)]
