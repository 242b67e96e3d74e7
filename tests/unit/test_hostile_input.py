"""Hostile input on the ingest path, property-based (hypothesis): random bytes, bit-flipped valid events and erasure
requests, deeply nested JSON, huge strings and numbers, invalid Unicode, odd time zones and control characters in
ids. Every record is either applied (or skipped for a stated reason) or dead-lettered, exactly once, with a stable
reason; nothing else is ever raised; every state the batch leaves encodes and decodes to itself and every output
record is valid JSON against its schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.builders import two_persona_model
from worker import codec
from worker.changes import InputRecord, Segmenter
from worker.errors import InvalidEvent
from worker.events import EventParser
from worker.features import UserState
from worker.features.wire import decode, encode
from worker.settings import Settings

NOW = 1_800_000_000_000
T0 = 1_767_225_600_000
SCHEMAS = Path(__file__).parents[2] / "schemas"
CHANGE_SCHEMA = json.loads((SCHEMAS / "segment-change.v1.json").read_text())
REASONS = {
    "empty",
    "oversize",
    "not_json",
    "non_finite_number",
    "not_object",
    "missing_field",
    "invalid_field",
    "bad_timestamp",
    "timestamp_in_future",
}
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

nasty_text = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec=None, categories=["Cc", "Cf", "Zl", "Zp", "Co"]), max_size=20),  # controls
    st.sampled_from(["", " ", "\x00", "../../etc/passwd", "Europe/../../x", "A" * 300, "\u202e", "UTC", "Mars/Base"]),
)
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    nasty_text,
)
json_value = st.recursive(
    json_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(nasty_text, inner, max_size=4), max_leaves=30
)


def valid_event(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "user_id": draw(st.sampled_from(["u1", "u2", "u3"])),
        "event_type": draw(st.sampled_from(["view", "post", "purchase"])),
        "timestamp": T0 + draw(st.integers(0, 10**9)),
        "value": 3.5,
        "context": {"timezone": draw(nasty_text), "platform": "ios"},
    }


@st.composite
def hostile_records(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 6))
    if kind == 0:  # random bytes
        return draw(st.binary(max_size=300))
    if kind == 1:  # a valid event with flipped bits
        raw = bytearray(codec.dumps(valid_event(draw)))
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(raw) * 8 - 1))
            raw[i // 8] ^= 1 << (i % 8)
        return bytes(raw)
    if kind == 2:  # deeply nested JSON, up to and beyond the parser's depth limit
        depth = draw(st.integers(1, 3000))
        return b'{"user_id":"u1","event_type":"v","timestamp":1,"properties":' + b"[" * depth + b"]" * depth + b"}"
    if kind == 3:  # any JSON document, or an event with any value in one field
        doc = valid_event(draw)
        doc[draw(st.sampled_from([*doc, "context", "session_id", "event_id", "properties"]))] = draw(json_value)
        return codec.dumps(doc) if draw(st.booleans()) else codec.dumps(draw(json_value))
    if kind == 4:  # huge strings and numbers written by hand (beyond what orjson writes)
        digits = draw(st.integers(1, 5000))
        return draw(
            st.sampled_from(
                [
                    b'{"user_id":"u1","event_type":"v","timestamp":1' + b"0" * digits + b"}",
                    b'{"user_id":"u1","event_type":"v","timestamp":1,"value":9' + b"9" * digits + b"}",
                    b'{"user_id":"u1","event_type":"v","timestamp":1,"value":1e' + str(digits).encode() + b"}",
                    b'{"user_id":"' + b"u" * digits + b'","event_type":"v","timestamp":1}',
                ]
            )
        )
    if kind == 5:  # invalid Unicode: lone surrogates, overlong and truncated sequences
        bad = draw(
            st.sampled_from(
                [b"\\ud800", b"\\udfff\\ud800", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"]
            )
        )
        return b'{"user_id":"u' + bad + b'","event_type":"v","timestamp":1767225600000}'
    # ids, types and timestamps with control characters, odd zones and offsets
    return codec.dumps(
        {
            "user_id": draw(nasty_text),
            "event_type": draw(nasty_text),
            "timestamp": draw(
                st.one_of(
                    st.integers(-(2**63), 2**63),
                    nasty_text,
                    st.sampled_from(["2026-01-01T00:00:00+99:00", "2026-02-30T00:00:00Z", "1969-12-31T23:59:59Z"]),
                )
            ),
            "context": {"timezone": draw(nasty_text), "consent": draw(json_value)},
        }
    )


parser = EventParser(max_bytes=65_536, max_future_ms=86_400_000)
MODEL = two_persona_model(Settings(min_events=1, confirmations=1, min_margin=0.0))


@FAST
@given(hostile_records())
def test_the_parser_applies_or_rejects_with_a_stable_reason(raw: bytes) -> None:
    for parse in (parser.parse, parser.parse_erasure):
        try:
            parse(raw, NOW)
        except InvalidEvent as exc:
            assert exc.reason in REASONS
            assert len(exc.detail) <= 200


@st.composite
def batches(draw: st.DrawFn) -> list[InputRecord]:
    records = []
    for offset in range(draw(st.integers(1, 30))):
        kind = "erasure" if draw(st.integers(0, 9)) == 0 else "event"
        choice = draw(st.integers(0, 3))
        if choice == 0 and kind == "erasure":
            value = codec.dumps({"user_id": draw(st.sampled_from(["u1", "u2"])), "requested_at": T0})
        elif choice == 0:
            value = codec.dumps(valid_event(draw))
        else:
            value = draw(hostile_records())
        records.append(InputRecord(value, None, 0, offset, 0, offset, 0.0, kind))
    return records


@FAST
@given(batches())
def test_every_record_is_applied_or_dead_lettered_exactly_once(records: list[InputRecord]) -> None:
    s = Settings(min_events=1, confirmations=1, min_margin=0.0)
    store: dict[str, UserState] = {}
    seg = Segmenter(s, store, lambda _u: 0)
    seg.set_model(MODEL)  # evaluations and change records too
    res = seg.process(records, NOW, 0.0)
    accounted = res.processed + len(res.dead) + res.duplicates + len(res.forward) + res.excluded + res.withdrawals
    erasures = [r for r in records if r.kind == "erasure"]
    assert accounted + res.erasures == len(records)
    assert res.erasures <= len(erasures)
    assert len({id(d.record) for d in res.dead}) == len(res.dead)  # never twice
    assert all(d.reason in REASONS for d in res.dead), [d.reason for d in res.dead]
    # an event applied on an empty store always leaves a first change, and a state unless its user was erased
    assert res.processed == 0 or (res.changes and (res.dirty or res.erased))
    for state in res.dirty.values():  # what would go to the changelog survives the round trip
        raw = encode(state)
        assert encode(decode(raw)) == raw
    for _, change, _ in res.changes:
        jsonschema.validate(codec.loads(change), CHANGE_SCHEMA)
