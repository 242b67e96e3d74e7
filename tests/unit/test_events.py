from __future__ import annotations

import random
from datetime import datetime

import pytest

from worker import codec
from worker.errors import InvalidEvent
from worker.events import EventParser, format_rfc3339, parse_timestamp

NOW = 1_800_000_000_000
parser = EventParser(max_bytes=4096, max_future_ms=86_400_000)


def ev(**fields: object) -> bytes:
    base: dict[str, object] = {"user_id": "u1", "event_type": "view", "timestamp": 1_767_225_600_000}
    base.update(fields)
    return codec.dumps({k: v for k, v in base.items() if v is not None})


def test_valid_event_with_everything() -> None:
    e = parser.parse(
        ev(
            value=12.5,
            session_id="s",
            event_id="e1",
            context={"platform": "ios", "timezone": "Europe/Berlin"},
            properties={"sku": 1},
        ),
        NOW,
    )
    assert (e.user_id, e.event_type, e.ts, e.value, e.session_id) == ("u1", "view", 1_767_225_600_000, 12.5, "s")
    assert e.context == {"platform": "ios", "timezone": "Europe/Berlin"}


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2026-01-01T00:00:00Z", 1_767_225_600_000),
        ("2026-01-01T01:00:00+01:00", 1_767_225_600_000),
        ("2026-01-01T00:00:00.250Z", 1_767_225_600_250),
    ],
)
def test_rfc3339_timestamps(text: str, ms: int) -> None:
    assert parse_timestamp(text) == ms
    assert parser.parse(ev(timestamp=text), NOW).ts == ms


def test_a_whole_float_is_epoch_milliseconds_like_json_schema_says() -> None:
    assert parser.parse(ev(timestamp=1_767_225_600_000.0), NOW).ts == 1_767_225_600_000
    assert parser.parse(b'{"user_id":"u","event_type":"v","timestamp":0.0}', NOW).ts == 0
    with pytest.raises(InvalidEvent) as err:
        parse_timestamp(True)
    assert err.value.reason == "bad_timestamp"


def test_format_rfc3339_round_trips() -> None:
    assert parse_timestamp(format_rfc3339(1_767_225_600_123)) == 1_767_225_600_123


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty"),
        (b"x" * 5000, "oversize"),
        (b"{not json", "not_json"),
        (b"\xff\xfe garbage", "not_json"),
        (b'{"user_id": "u", "event_type": "v", "timestamp": 1, "value": NaN}', "non_finite_number"),
        (b'{"user_id": "u", "event_type": "v", "timestamp": 1, "value": 1e999}', "non_finite_number"),
        (b"[1, 2]", "not_object"),
        (ev(user_id=None), "missing_field"),
        (ev(timestamp=None), "missing_field"),
        (ev(user_id=7), "invalid_field"),
        (ev(user_id=""), "invalid_field"),
        (ev(user_id="x" * 257), "invalid_field"),
        (ev(event_type=""), "invalid_field"),
        (ev(value="12"), "invalid_field"),
        (ev(value=True), "invalid_field"),
        (ev(context={"platform": 3}), "invalid_field"),
        (ev(timestamp="yesterday"), "bad_timestamp"),
        (ev(timestamp="2026-01-01T00:00:00"), "bad_timestamp"),
        (ev(timestamp=-5), "bad_timestamp"),
        (ev(timestamp=1.5), "bad_timestamp"),
        (ev(timestamp=NOW + 2 * 86_400_000), "timestamp_in_future"),
    ],
)
def test_invalid_records_have_a_stable_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        parser.parse(raw, NOW)
    assert info.value.reason == reason


_ODD_VALUES: list[object] = [
    None,
    True,
    False,
    0,
    -1,
    1.5,
    2**53,
    253402300799999,
    253402300800000,
    "",
    "x",
    "2026-01-01",
    "x" * 64,
    "x" * 65,
    "x" * 129,
    "x" * 257,
    [],
    {},
    {"platform": 1},
    {"timezone": "x" * 65},
    {"other": 1},
    {"platform": "x" * 64, "channel": ""},
    {"country": None},
    {"consent": {"segmentation": True}, "language": "de"},
    {"consent": {"segmentation": "no"}},
    {"consent": {"segmentation": None}},
    {"consent": {"other": 1}},
    {"consent": []},
    {"consent": None},
    1e300,
]


def test_fast_check_never_accepts_what_the_schema_rejects() -> None:
    """The hot path's shortcut (``_surely_valid``) may send valid events to the full validator, but every event it
    accepts must pass the schema; mutated events probe each field's bounds."""
    import random

    import fastjsonschema

    from worker.events.ingest import _surely_valid, load_schema

    validate = fastjsonschema.compile(load_schema("user-event.v1.json"))
    rng = random.Random(7)
    fields = ["user_id", "event_type", "timestamp", "event_id", "value", "session_id", "context", "properties"]
    accepted = rejected_by_schema = 0
    for _ in range(20_000):
        doc: dict[str, object] = {
            "user_id": "u1",
            "event_type": "view",
            "timestamp": rng.choice([1_767_225_600_000, "2026-01-01T00:00:00Z"]),
            "value": 3.5,
            "session_id": "s",
            "context": {"platform": "ios", "timezone": "UTC"},
            "properties": {"k": 1},
        }
        for key in rng.sample(fields, rng.randint(1, 3)):
            if rng.random() < 0.2:
                doc.pop(key, None)
            else:
                doc[key] = rng.choice(_ODD_VALUES)
        try:
            validate(doc)
            ok = True
        except fastjsonschema.JsonSchemaValueException:
            ok = False
            rejected_by_schema += 1
        if _surely_valid(doc):
            accepted += 1
            assert ok, doc
    assert accepted > 1000 and rejected_by_schema > 1000  # both sides exercised


def test_the_written_form_parses_as_datetime_reads_it_without_a_datetime_per_event() -> None:
    """The fast path for ``YYYY-MM-DDTHH:MM:SS.mmmZ`` gives what ``datetime.fromisoformat`` gives (to the
    millisecond it truncates), and leaves every other string to the full parse and its reasons."""
    rng = random.Random(5)
    for _ in range(20_000):
        text = format_rfc3339(rng.randrange(0, 4_102_444_800_000))
        assert parse_timestamp(text) == int(datetime.fromisoformat(text).timestamp() * 1000), text
    assert parse_timestamp("2026-01-01t23:59:59.000Z") == parse_timestamp("2026-01-01T23:59:59.000Z")
    for bad in (
        "2026-02-30T00:00:00.000Z",
        "2026-01-01T24:00:00.000Z",
        "2026-01-01T23:59:60.000Z",
        "2026-01-01T23:59:5a.000Z",
        "2026-01-01T23:59:+9.000Z",
        "1969-12-31T23:59:59.999Z",
    ):
        with pytest.raises(InvalidEvent, match="bad_timestamp"):
            parse_timestamp(bad)
