from __future__ import annotations

import random

import pytest

from tests.unit.builders import DAY, HL, T0, apply, event, fresh
from worker import codec
from worker.features import UserState, apply_event
from worker.features.wire import EncodedStates, StateDecodeError, decode, encode, peek


def _same(a: UserState, b: UserState) -> bool:
    """Equal to the bit: the JSON of the fields, where 0.0 and -0.0 or two float roundings would differ."""
    return bool(codec.dumps(a.to_fields()) == codec.dumps(b.to_fields()))


def _busy_state(seed: int) -> UserState:
    rng = random.Random(seed)
    s = fresh()
    t = T0
    for i in range(rng.randint(1, 200)):
        t += rng.randint(-DAY, 3 * DAY)  # out-of-order events too
        tz = rng.choice([None, "Asia/Tokyo", "Europe/Berlin", "Not/AZone"])
        value = rng.choice([None, 0.0, 9.99, rng.uniform(0, 500)])
        etype = rng.choice(["view", "purchase", "like", "söhne", "post", "share"])
        apply_event(s, event(t, etype, value, rng.choice([None, "a", "b"]), tz), HL, 4, 1_800_000)
        s.fence(rng.randint(0, 3), i * 7)
    s.segment = rng.choice([None, "p0", "p3"])
    s.segment_since = t if s.segment else 0
    s.pending, s.pending_n = rng.choice([(None, 0), ("p1", 1)])
    s.seq, s.model_version, s.silence_step = rng.randint(0, 9), rng.randint(-1, 40), rng.randint(0, 3)
    s.due = rng.choice([0, t + 14 * DAY])
    s.history = [
        [k + 1, rng.choice([None, "p0"]), "p3", t - rng.randint(-DAY, 9 * DAY), "event", [["view", "up"]]]
        for k in range(rng.randint(0, 3))
    ]
    s.rule_seq = rng.choice([0, 0, 3])
    s.rule_segments = ["high_value"] if s.rule_seq else []
    return s


@pytest.mark.parametrize("seed", range(40))
def test_round_trip_is_exact(seed: int) -> None:
    s = _busy_state(seed)
    assert _same(decode(encode(s)), s)


def test_edge_values_round_trip() -> None:
    s = fresh()  # never saw an event: every time 0, no rates
    assert _same(decode(encode(s)), s)
    s = apply(fresh(), event(T0, value=3.0, tz="Europe/Berlin"))
    s.value_total = -0.0
    s.sessions = float("inf")
    s.context["note"] = "x" * 400  # a skeleton longer than one length byte
    back = decode(encode(s))
    assert _same(back, s) and str(back.value_total) == "-0.0"


def test_smaller_than_the_json_form() -> None:
    s = _busy_state(3)
    assert len(encode(s)) < 0.8 * len(codec.dumps(s.to_fields()))


def test_older_json_records_still_decode() -> None:
    s = _busy_state(5)
    assert _same(decode(codec.dumps(s.to_fields())), s)


@pytest.mark.parametrize("cut", [1, 2, 10, -1])
def test_truncated_or_foreign_records_raise_the_domain_error(cut: int) -> None:
    data = encode(_busy_state(7))
    with pytest.raises(StateDecodeError):
        decode(data[:cut])
    with pytest.raises(StateDecodeError):
        decode(b"")
    with pytest.raises(StateDecodeError):
        decode(b"\x07" + data[1:])  # a format this version does not know


def test_decoded_lists_are_mutable_and_independent() -> None:
    s = apply(fresh(), event(T0, "view"), event(T0 + 1000, "like"))
    back = decode(encode(s))
    apply(back, event(T0 + 2000, "view", 5.0))
    apply(s, event(T0 + 2000, "view", 5.0))
    assert _same(back, s)
    assert back.daypart is not back.spend and back.rates["view"] is not back.rates["like"]


@pytest.mark.parametrize("seed", range(40))
def test_peek_reads_count_segment_and_due_as_decode_does(seed: int) -> None:
    s = _busy_state(seed)
    assert peek(encode(s)) == (s.n, s.segment, s.due)
    assert peek(codec.dumps(s.to_fields())) == (s.n, s.segment, s.due)  # the older JSON form too
    with pytest.raises(StateDecodeError):
        peek(encode(s)[:4])


def test_encoded_states_hold_bytes_and_hand_out_independent_objects() -> None:
    data: dict[str, bytes] = {}
    states = EncodedStates(data)
    s = _busy_state(11)
    states["u"] = s
    assert data["u"] == encode(s) and len(states) == 1 and list(states) == ["u"]
    got = states.get("u")
    assert got is not None and _same(got, s)
    got.n += 1  # a caller's object: the stored state changes only when written back
    assert states["u"].n == s.n
    assert states.get("nobody") is None
    assert list(states.summaries()) == [("u", s.n, s.segment, s.due)]
    del states["u"]
    assert not data


def test_records_written_before_the_history_was_kept_still_decode() -> None:
    s = _busy_state(21)
    s.history, s.max_gap = [], 0
    old = encode(s)  # without history (and the longest gap, kept later) the layout is the one before it existed
    s.history = [[1, None, "p3", s.last_ts, "event", []]]
    new = encode(s)
    assert new.startswith(old) and decode(old).history == [] and decode(new).history == s.history
    assert peek(new) == peek(old)  # the index rebuild does not read it
    legacy = s.to_fields()[:-6]  # the all-JSON form before the history, custom segment, origin, longest-gap, scale
    back = UserState.from_fields(legacy)
    assert (back.history, back.rule_segments, back.rule_seq, back.origin, back.max_gap) == ([], [], 0, s.first_ts, 0)
    assert decode(old[: len(old)] + b'[[1, null, "p3", 0, "event", []]]').history == [
        [1, None, "p3", s.last_ts, "event", []]
    ]
