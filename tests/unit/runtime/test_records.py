"""Records in and out of the worker: consumed records as the core's input, a batch's result as outbox records."""

from __future__ import annotations

from worker.changes import BatchResult, InputRecord
from worker.changes.segmenter import DeadLetter
from worker.runtime.records import (
    BY_USER,
    ERASURES,
    INPUT,
    SAMPLES_PER_RECORD,
    OutputEncoder,
    OutputTopics,
    input_record,
)

TOPICS = OutputTopics("by-user", "dlq", "changes", "memberships", "samples", "events", "erasures")


def test_input_records_of_each_stream() -> None:
    assert input_record(INPUT, 2, 7, b"k", b"v", None, 8, 1.5) == InputRecord(b"v", b"k", 2, 7, 2, 7, 1.5)
    assert input_record(ERASURES, 1, 3, b"k", b"v", None, 8, 0.0).kind == "erasure"
    # re-routed: fenced where it first arrived, an erasure request still one
    headers = [("sw.src.partition", b"5"), ("sw.src.offset", b"42"), ("sw.kind", b"erasure")]
    r = input_record(BY_USER, 0, 9, b"u", b"v", headers, 8, 0.0)
    assert (r.partition, r.offset, r.src_partition, r.src_offset, r.kind) == (0, 9, 5, 42, "erasure")
    # written by someone else (no headers): its own coordinates, past the input's partition numbers
    r = input_record(BY_USER, 3, 9, b"u", b"v", [("sw.src.offset", b"x")], 8, 0.0)
    assert (r.src_partition, r.src_offset, r.kind) == (11, 9, "event")


def test_a_batch_encoded_in_order_with_its_headers() -> None:
    event = InputRecord(b"e", b"wrong", 1, 10, 1, 10, 0.0)
    erasure = InputRecord(b"x", b"u", 2, 4, 2, 4, 0.0, "erasure")
    res = BatchResult(
        forward=[(3, "u1", event), (0, "u2", erasure)],
        dead=[DeadLetter(event, "not_json", "bad"), DeadLetter(erasure, "missing_field", "no user_id")],
        changes=[("u1", b"c1", 0.0)],
        memberships=[("u1", "regular", "entered", b"m1")],
        samples=[b"s"] * (SAMPLES_PER_RECORD + 1),
    )
    out = OutputEncoder(TOPICS, lambda uid: 6).encode(res)
    assert [(t, k, p) for t, k, _, p, _ in out] == [
        ("by-user", b"u1", 3),
        ("by-user", b"u2", 0),
        ("dlq", b"wrong", None),
        ("dlq", b"u", None),
        ("changes", b"u1", 6),
        ("memberships", b"u1", None),
        ("samples", None, 0),
        ("samples", None, 0),
    ]
    assert out[0][4] == [("sw.src.partition", b"1"), ("sw.src.offset", b"10")]
    assert out[1][4] == [("sw.src.partition", b"2"), ("sw.src.offset", b"4"), ("sw.kind", b"erasure")]
    assert out[2][4] == [
        ("dlq.reason", b"not_json"),
        ("dlq.detail", b"bad"),
        ("dlq.source.topic", b"events"),
        ("dlq.source.partition", b"1"),
        ("dlq.source.offset", b"10"),
    ]
    assert dict(out[3][4] or [])["dlq.source.topic"] == b"erasures"
    assert out[6][2] == b"[" + b",".join([b"s"] * SAMPLES_PER_RECORD) + b"]" and out[7][2] == b"[s]"
