from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from tests.unit.builders import record_factory, step, two_persona_model
from worker import codec
from worker.changes import InputRecord, Segmenter
from worker.changes.gate import OffsetGate
from worker.changes.hysteresis import decide
from worker.changes.segmenter import change_id
from worker.changes.silence import BUCKET_MS, SilenceIndex
from worker.clustering.snapshot import Displacement, ModelSnapshot, displacements
from worker.events.timefmt import format_rfc3339, parse_timestamp
from worker.features import UserState
from worker.features.wire import MARKER, EncodedStates
from worker.segments.rules import parse_segment_rules
from worker.settings import Settings

DAY = 86_400_000
T0 = 1_767_225_600_000
CHANGE_SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "segment-change.v1.json").read_text())


def test_first_assignment_waits_for_min_events() -> None:
    s = UserState(2)
    assert decide(s, "p1", 0.9, n=2, min_events=3, confirmations=2, min_margin=0.1) is None
    assert decide(s, "p1", 0.9, n=3, min_events=3, confirmations=2, min_margin=0.1) == (None, "p1")


def test_move_needs_consecutive_confident_confirmations() -> None:
    s = UserState(2)
    s.segment = "p1"
    kw = {"n": 10, "min_events": 3, "confirmations": 3, "min_margin": 0.2}
    assert decide(s, "p2", 0.5, **kw) is None
    assert decide(s, "p2", 0.05, **kw) is None  # weak evidence does not count, does not reset
    assert decide(s, "p2", 0.5, **kw) is None
    assert decide(s, "p1", 0.5, **kw) is None  # back home: pending move cancelled
    assert s.pending is None
    assert [decide(s, "p2", 0.5, **kw) for _ in range(3)] == [None, None, ("p1", "p2")]


def test_a_first_persona_from_new_needs_min_events_but_no_confirmation() -> None:
    s = UserState(2)
    s.segment = "new"
    kw = {"min_events": 3, "confirmations": 3, "min_margin": 0.2}
    assert decide(s, "p1", 0.0, n=2, **kw) is None
    assert decide(s, "p1", 0.0, n=3, **kw) == ("new", "p1")


def test_change_ids_are_deterministic() -> None:
    assert change_id("u", 2, "p1", "p2", T0) == change_id("u", 2, "p1", "p2", T0)
    assert (
        len(
            {
                change_id("u", 2, "p1", "p2", T0),
                change_id("u", 3, "p1", "p2", T0),
                change_id("v", 2, "p1", "p2", T0),
                change_id("u", 1, None, "p2", T0),
                change_id("u", 2, "p1", None, T0),
                change_id("u", 2, "p1", "p2", T0 + 1),  # the same move in a later profile of the user
            }
        )
        == 6
    )


def test_silence_index_pops_only_passed_buckets() -> None:
    idx = SilenceIndex()
    idx.schedule(0, "a", 10 * BUCKET_MS + 5)
    idx.schedule(0, "b", 12 * BUCKET_MS)
    idx.schedule(1, "c", 1)
    assert idx.pop_due(0, 10 * BUCKET_MS + 999) == []  # bucket 10 not over yet
    assert idx.pop_due(0, 11 * BUCKET_MS) == ["a"]
    assert idx.pop_due(0, 11 * BUCKET_MS) == []
    assert len(idx) == 2


# --- the segmenter, on a model with two personas: "viewers" and "buyers" ---------------------------------------


@pytest.mark.parametrize("encoded", [False, True], ids=["objects", "encoded"])
def test_segmenter_end_to_end_on_a_known_model(encoded: bool) -> None:
    s = Settings(
        min_events=3,
        confirmations=2,
        min_margin=0.0,
        dormant_after_days=5,
        silence_checks_days=(2.0,),
        lapsing_share=0.5,
    )
    model = two_persona_model(s)
    store: MutableMapping[str, UserState] = EncodedStates({}) if encoded else {}
    seg = Segmenter(s, store, lambda _u: 0)
    seg.set_model(model)
    rec = record_factory()
    changes = []
    hour = 3_600_000
    # u views for 10 hours -> viewers; then buys for 30 hours -> moves to buyers
    for i in range(10):
        changes += step(seg, [rec("u", "view", T0 + i * hour)]).changes
    for i in range(10, 40):
        changes += step(seg, [rec("u", "purchase", T0 + i * hour, 80.0)]).changes
    # another user's events push the watermark 10 days on: u is re-evaluated by the silence timer, is lapsing
    # after half the dormancy silence (2.5 days), dormant after 5
    changes += step(seg, [rec("w", "view", T0 + 10 * DAY)]).changes
    docs = [codec.loads(c) for _, c, _ in changes if codec.loads(c)["user_id"] == "u"]
    for d in docs:
        jsonschema.validate(d, CHANGE_SCHEMA)
    assert [(d["from_segment"], d["to_segment"]) for d in docs] == [
        (None, "new"),
        ("new", "p1"),
        ("p1", "p2"),
        ("p2", "lapsing"),
        ("lapsing", "dormant"),
    ]
    assert [d["sequence"] for d in docs] == [1, 2, 3, 4, 5]
    assert docs[0]["trigger"] == "event" and docs[0]["reasons"] == [] and docs[0]["changed_at"] == format_rfc3339(T0)
    assert docs[2]["reasons"] and docs[2]["reasons"][0]["direction"] in ("up", "down")
    last = T0 + 39 * hour
    assert [parse_timestamp(d["changed_at"]) - last for d in docs[3:]] == [int(2.5 * DAY), 5 * DAY]
    for d in docs[3:]:
        assert d["trigger"] == "silence" and d["reasons"][0]["feature"] == "days_since_last_event"
    assert store["u"].n == 40 and store["u"].segment == "dormant"
    assert seg.counts["dormant"] == 1 and seg.counts["lapsing"] == 0
    # the recent history the API shows (USER_HISTORY=3): the newest moves, with when, why and how triggered
    history = store["u"].history
    assert [(h[0], h[1], h[2], h[4]) for h in history] == [
        (3, "p1", "p2", "event"),
        (4, "p2", "lapsing", "silence"),
        (5, "lapsing", "dormant", "silence"),
    ]
    assert [format_rfc3339(h[3]) for h in history] == [d["changed_at"] for d in docs[2:]]
    assert history[0][5] == [[r["feature"], r["direction"]] for r in docs[2]["reasons"][:2]]
    assert history[2][5] == [["days_since_last_event", "up"]]
    # indexes rebuilt from the store (after a rebalance) agree with the ones kept along the way
    counts = dict(seg.counts)
    seg.rebuild({0}, {0: T0 + 10 * DAY})
    assert {k: v for k, v in seg.counts.items() if v} == {k: v for k, v in counts.items() if v}
    assert seg.silence.buckets == {0: {(T0 + 12 * DAY) // BUCKET_MS: {"w"}}}  # u went dormant: no timer left


@pytest.mark.parametrize("encoded", [False, True], ids=["objects", "encoded"])
def test_the_first_model_sweeps_waiting_users_in(encoded: bool) -> None:
    s = Settings(min_events=3, confirmations=2, min_margin=0.0)
    store: MutableMapping[str, UserState] = EncodedStates({}) if encoded else {}
    seg = Segmenter(s, store, lambda _u: 0)
    rec = record_factory()
    for i in range(5):
        step(seg, [rec("v", "view", T0 + i * 3_600_000), rec("b", "purchase", T0 + i * 3_600_000, 50.0)])
    step(seg, [rec("new", "view", T0)])  # below min_events: keeps waiting
    seg.set_model(two_persona_model(s))
    res = seg.sweep({0}, 0.0)
    store.update(res.dirty)
    moved = {codec.loads(c)["user_id"]: codec.loads(c)["to_segment"] for _, c, _ in res.changes}
    assert moved == {"v": "p1", "b": "p2"}
    assert store["v"].segment == "p1" and store["new"].segment == "new"
    assert [codec.loads(c)["from_segment"] for _, c, _ in res.changes] == ["new", "new"]


def test_duplicates_dead_letters_and_foreign_users() -> None:
    s = Settings()
    store: dict[str, UserState] = {}
    seg = Segmenter(s, store, lambda uid: 1 if uid == "elsewhere" else 0)
    good = InputRecord(codec.dumps({"user_id": "u", "event_type": "v", "timestamp": T0}), None, 0, 7, 0, 7, 0)
    res = seg.process([good, good], 2**62, 0)
    assert (res.processed, res.duplicates) == (1, 1)
    store.update(res.dirty)
    assert seg.process([good], 2**62, 0).duplicates == 1  # the fence survives across batches (in state)
    bad = InputRecord(b"nope", b"k", 0, 8, 0, 8, 0)
    foreign = InputRecord(
        codec.dumps({"user_id": "elsewhere", "event_type": "v", "timestamp": T0}), None, 0, 9, 0, 9, 0
    )
    res = seg.process([bad, foreign], 2**62, 0)
    assert [(d.reason, d.record.offset) for d in res.dead] == [("not_json", 8)]
    assert [(p, uid) for p, uid, _ in res.forward] == [(1, "elsewhere")]
    assert res.processed == 0


def test_batching_does_not_change_the_outcome() -> None:
    s = Settings(min_events=3, confirmations=2, min_margin=0.0)
    model = two_persona_model(s)
    rec = record_factory()
    hour = 3_600_000
    records = [rec("u", "view", T0 + i * hour) for i in range(8)] + [
        rec("u", "purchase", T0 + i * hour, 80.0) for i in range(8, 30)
    ]
    outcomes = []
    for size in (1, 4, len(records)):
        seg = Segmenter(s, {}, lambda _u: 0)
        seg.set_model(model)
        out = []
        for i in range(0, len(records), size):
            out += [c for _, c, _ in step(seg, records[i : i + size]).changes]
        outcomes.append(out)
    assert outcomes[0] == outcomes[1] == outcomes[2] and len(outcomes[0]) == 3  # new, p1, p2


# --- the offset gate ---------------------------------------------------------------------------------------
def _rec(partition: int, offset: int) -> InputRecord:
    return InputRecord(b"{}", None, partition, offset, partition, offset, 0.0)


def _offsets(records: list[InputRecord]) -> list[tuple[int, int]]:
    return [(r.partition, r.offset) for r in records]


def test_gate_applies_in_order_and_skips_redeliveries() -> None:
    gate = OffsetGate()
    gate.open(0, 5)
    gate.open(1, 0)
    batch = [_rec(0, 3), _rec(0, 5), _rec(1, 0), _rec(0, 6), _rec(0, 5), _rec(1, 1)]
    assert gate.holes(batch) == []
    got = gate.admit(batch)
    assert sorted(_offsets(got.records)) == [(0, 5), (0, 6), (1, 0), (1, 1)]
    assert (got.duplicates, got.held, got.foreign) == (2, 0, 0)
    assert gate.next == {0: 7, 1: 2}
    assert gate.admit([_rec(0, 6), _rec(1, 1)]).records == []  # a whole re-delivered batch applies nothing


def test_gate_names_holes_and_takes_the_fetched_records_in_order() -> None:
    gate = OffsetGate()
    gate.open(0, 10)
    batch = [_rec(0, 12), _rec(0, 13), _rec(0, 16)]  # 10, 11, 14, 15 were never delivered
    assert gate.holes(batch) == [(0, 10, 12), (0, 14, 16)]
    fetched = [_rec(0, 10), _rec(0, 11), _rec(0, 14), _rec(0, 15)]
    got = gate.admit(batch + fetched, [(0, 10, 12), (0, 14, 16)])
    assert _offsets(got.records) == [(0, o) for o in (10, 11, 12, 13, 14, 15, 16)]
    assert gate.next == {0: 17}


def test_gate_steps_over_confirmed_gaps_only() -> None:
    gate = OffsetGate()
    gate.open(0, 0)
    # offsets 2..3 do not exist (a transaction marker, compaction): the broker read of 0..4 confirmed it
    got = gate.admit([_rec(0, 0), _rec(0, 1), _rec(0, 4)], [(0, 0, 4)])
    assert _offsets(got.records) == [(0, 0), (0, 1), (0, 4)]
    # unconfirmed: 6 is missing and nobody read it, so 7 and 8 wait (the position stays at 6)
    got = gate.admit([_rec(0, 5), _rec(0, 7), _rec(0, 8)])
    assert _offsets(got.records) == [(0, 5)]
    assert got.held == 2 and gate.next == {0: 6}


def test_gate_leaves_partitions_it_does_not_hold() -> None:
    gate = OffsetGate()
    gate.open(0, 0)
    gate.open(1, 0)
    gate.close([1])
    assert gate.holes([_rec(1, 9)]) == []
    got = gate.admit([_rec(0, 0), _rec(1, 0)])
    assert _offsets(got.records) == [(0, 0)] and got.foreign == 1


def test_history_keeps_the_newest_changes_only() -> None:
    s = Settings(min_events=3, confirmations=1, min_margin=0.0, dormant_after_days=5, user_history=2)
    store: dict[str, UserState] = {}
    seg = Segmenter(s, store, lambda _u: 0)
    seg.set_model(two_persona_model(s))
    rec = record_factory()
    hour = 3_600_000
    for i in range(6):
        step(seg, [rec("u", "view", T0 + i * hour)])
    for i in range(6, 30):
        step(seg, [rec("u", "purchase", T0 + i * hour, 80.0)])
    step(seg, [rec("w", "view", T0 + 10 * DAY)])  # u goes dormant: five changes (new, p1, p2, lapsing, dormant)
    assert store["u"].seq == 5
    assert [h[0] for h in store["u"].history] == [4, 5]
    off = Settings(min_events=3, confirmations=1, min_margin=0.0, user_history=0)
    seg = Segmenter(off, store := {}, lambda _u: 0)
    seg.set_model(two_persona_model(off))
    for i in range(6):
        step(seg, [rec("x", "view", T0 + i * hour)])
    assert store["x"].seq == 2 and store["x"].history == []


@pytest.mark.parametrize(("zone", "expected"), [("Europe/Berlin", "Europe/Berlin"), ("Not/AZone", None), (None, None)])
def test_changes_carry_the_users_time_zone_when_known(zone: str | None, expected: str | None) -> None:
    s = Settings(min_events=3, confirmations=1, min_margin=0.0)
    seg = Segmenter(s, {}, lambda _u: 0)
    seg.set_model(two_persona_model(s))
    records = []
    for i in range(3):
        body: dict[str, object] = {"user_id": "u", "event_type": "view", "timestamp": T0 + i * 3_600_000}
        if zone:
            body["context"] = {"timezone": zone}
        records.append(InputRecord(codec.dumps(body), None, 0, i, 0, i, 0.0))
    docs = [codec.loads(raw) for _, raw, _ in step(seg, records).changes]
    assert [(d["from_segment"], d["to_segment"]) for d in docs] == [(None, "new"), ("new", "p1")]
    for doc in docs:
        jsonschema.validate(doc, CHANGE_SCHEMA)
        assert doc["timezone"] == expected


# --- users leaving: erasure requests and consent ---------------------------------------------------------------


def erasure(uid: str, t: int, offset: int, partition: int = 0) -> InputRecord:
    body = codec.dumps({"user_id": uid, "requested_at": format_rfc3339(t), "request_id": "r-1"})
    return InputRecord(body, None, partition, offset, partition, offset, 0.0, "erasure")


def consent(uid: str, t: int, given: bool, offset: int) -> InputRecord:
    body = {"user_id": uid, "event_type": "view", "timestamp": t, "context": {"consent": {"segmentation": given}}}
    return InputRecord(codec.dumps(body), None, 0, offset, 0, offset, 0.0)


def buyer_settings() -> Settings:
    return Settings(min_events=3, confirmations=1, min_margin=0.0, dormant_after_days=5, erasure_topic="erase-me")


def segmenter_with_buyer(encoded: bool) -> tuple[Segmenter, Callable[..., InputRecord], list[dict[str, object]]]:
    """A segmenter whose user ``u`` is a buyer (p2) and in the custom segment ``spenders``."""
    s = buyer_settings()
    rules = parse_segment_rules({"segments": {"spenders": "monetary_total > 100"}}, s.half_lives_ms)
    store: MutableMapping[str, UserState] = EncodedStates({}) if encoded else {}
    seg = Segmenter(s, store, lambda _u: 0, segment_rules=rules)
    seg.set_model(two_persona_model(s))
    rec = record_factory()
    docs = []
    for i in range(5):
        res = step(seg, [rec("u", "purchase", T0 + i * 3_600_000, 80.0), rec("w", "view", T0 + i * 3_600_000)])
        docs += [codec.loads(c) for _, c, _ in res.changes if codec.loads(c)["user_id"] == "u"]
    assert store["u"].segment == "p2" and store["u"].rule_segments == ["spenders"]
    return seg, rec, docs


@pytest.mark.parametrize("encoded", [False, True], ids=["objects", "encoded"])
def test_an_erasure_deletes_the_user_with_one_final_change_and_a_fresh_profile_follows(encoded: bool) -> None:
    seg, rec, before = segmenter_with_buyer(encoded)
    assert seg.counts["p2"] == 1
    t_erase = T0 + 6 * 3_600_000
    # in one batch: an event of u (its evaluation and sample go with the state), the erasure, another user's event
    res = step(seg, [rec("u", "purchase", T0 + 5 * 3_600_000, 80.0), erasure("u", t_erase, 41), rec("w", "view", T0)])
    assert res.erased == {"u"} and "u" not in seg.store and res.erasures == 1
    (final,) = [codec.loads(c) for uid, c, _ in res.changes if uid == "u"]
    jsonschema.validate(final, CHANGE_SCHEMA)
    assert (final["from_segment"], final["to_segment"], final["to_segment_name"]) == ("p2", None, None)
    assert final["trigger"] == "erased" and final["reasons"] == [] and final["sequence"] == len(before) + 1
    assert final["changed_at"] == format_rfc3339(t_erase)
    assert final["source"] == {"topic": "erase-me", "partition": 0, "offset": 41}
    assert [(m[0], m[1], m[2]) for m in res.memberships] == [("u", "spenders", "exited")]
    assert seg.counts["p2"] == 0 and ("p2", "none") in [t[:2] for t in res.transitions]
    assert len(res.samples) == len(res.sampled) and all(st is not None for st in res.sampled)
    assert all(b'"u"' not in sample for sample in res.samples)  # samples never name the user
    # again: nothing left to erase, nothing emitted
    again = step(seg, [erasure("u", t_erase, 42)])
    assert not again.changes and not again.memberships and again.erased == {"u"} and "u" not in seg.store
    # the silence timer of the old profile finds nothing: a watermark far past it resurrects nobody
    late = step(seg, [rec("w", "view", T0 + 30 * DAY)])
    assert "u" not in seg.store and all(uid != "u" for uid, _, _ in late.changes)
    # events after the erasure: a fresh profile, a new chain whose ids differ from the first chain's
    after = []
    for i in range(5):
        after += step(seg, [rec("u", "purchase", T0 + 31 * DAY + i * 3_600_000, 80.0)]).changes
    fresh = [codec.loads(c) for uid, c, _ in after if uid == "u"]
    assert fresh[0]["sequence"] == 1 and seg.store["u"].n == 5
    assert fresh[0]["event_id"] not in {d["event_id"] for d in before}
    assert (fresh[0]["from_segment"], fresh[0]["to_segment"]) == (before[0]["from_segment"], before[0]["to_segment"])


def test_an_erasure_between_events_of_one_batch_and_for_another_partition() -> None:
    seg, rec, _ = segmenter_with_buyer(encoded=True)
    res = step(seg, [erasure("u", T0, 50), rec("u", "view", T0 + 7 * 3_600_000)])
    assert not res.erased and seg.store["u"].n == 1 and seg.store["u"].segment == "new"  # erased, then a new profile
    seg.partition_of = lambda uid: 1 if uid == "x" else 0
    res = step(seg, [erasure("x", T0, 51), InputRecord(b"{}", None, 0, 52, 0, 52, 0.0, "erasure")])
    assert [(owner, uid) for owner, uid, _ in res.forward] == [(1, "x")]
    assert [(d.reason, d.record.kind) for d in res.dead] == [("missing_field", "erasure")]


@pytest.mark.parametrize("encoded", [False, True], ids=["objects", "encoded"])
def test_withdrawn_consent_keeps_a_marker_until_consent_is_given_again(encoded: bool) -> None:
    seg, rec, before = segmenter_with_buyer(encoded)
    res = step(seg, [consent("u", T0 + 6 * 3_600_000, False, 60)])
    (final,) = [codec.loads(c) for _, c, _ in res.changes]
    jsonschema.validate(final, CHANGE_SCHEMA)
    assert (final["to_segment"], final["trigger"], final["sequence"]) == (None, "consent_withdrawn", len(before) + 1)
    assert res.withdrawals == 1 and seg.store["u"].opted_out and seg.counts["p2"] == 0
    if encoded:
        assert isinstance(seg.store, EncodedStates) and seg.store.data["u"] == MARKER  # nothing but the fact
    # events without consent: not applied, not sampled, no change, not dead letters
    res = step(seg, [rec("u", "purchase", T0 + 7 * 3_600_000 + i, 80.0) for i in range(5)])
    assert res.excluded == 5 and not res.changes and not res.samples and not res.dead and seg.store["u"].opted_out
    assert not step(seg, [consent("u", T0 + 8 * 3_600_000, False, 61)]).changes  # withdrawn twice: nothing new
    # consent given again: a fresh profile from that event on
    res = step(seg, [consent("u", T0 + 9 * 3_600_000, True, 62)])
    assert not seg.store["u"].opted_out and seg.store["u"].n == 1 and res.processed == 1
    # a user never seen who opts out: only the marker
    step(seg, [consent("new", T0, False, 63)])
    assert seg.store["new"].opted_out and seg.store["new"].n == 0


# --- the lifecycle: new -> persona <-> persona -> dormant, for every known user ------------------------------


def chain_of(changes: list[tuple[str, bytes, float]], uid: str) -> list[dict[str, object]]:
    docs = [codec.loads(c) for u, c, _ in changes if u == uid]
    for d in docs:
        jsonschema.validate(d, CHANGE_SCHEMA)
    return docs


@pytest.mark.parametrize("with_model", [False, True], ids=["no-model", "model"])
def test_a_one_event_user_is_new_then_lapsing_then_dormant_whether_or_not_a_model_exists(with_model: bool) -> None:
    s = Settings(min_events=3, dormant_after_days=5, lapsing_share=0.5)
    seg = Segmenter(s, {}, lambda _u: 0)
    if with_model:
        seg.set_model(two_persona_model(s))
    rec = record_factory()
    changes = step(seg, [rec("once", "purchase", T0, 20.0)]).changes
    changes += step(seg, [rec("w1", "view", T0 + 2 * DAY)]).changes  # not yet 2.5 days of silence
    assert [(d["from_segment"], d["to_segment"]) for d in chain_of(changes, "once")] == [(None, "new")]
    changes += step(seg, [rec("w2", "view", T0 + 4 * DAY)]).changes  # lapsing, not yet dormant
    assert seg.counts["lapsing"] == 1
    changes += step(seg, [rec("w3", "view", T0 + 6 * DAY)]).changes
    once = chain_of(changes, "once")
    assert [(d["from_segment"], d["to_segment"], d["trigger"]) for d in once] == [
        (None, "new", "event"),
        ("new", "lapsing", "silence"),
        ("lapsing", "dormant", "silence"),
    ]
    # no model decides `new`: the version of the user's previous change (none yet), whatever model is in use
    assert once[0]["model_version"] == 0 and once[0]["to_segment_name"] == "new"
    assert [d["changed_at"] for d in once[1:]] == [format_rfc3339(T0 + int(2.5 * DAY)), format_rfc3339(T0 + 5 * DAY)]
    assert seg.counts["dormant"] == 1 and seg.store["once"].segment == "dormant"
    assert seg.counts["lapsing"] == 1 and seg.store["w1"].segment == "lapsing"  # silent for four days by now
    # back with one event, too few for the model: new again (the model places the user from MIN_EVENTS on)
    back = chain_of(step(seg, [rec("once", "view", T0 + 7 * DAY)]).changes, "once")
    assert [(d["from_segment"], d["to_segment"], d["trigger"]) for d in back] == [("dormant", "new", "event")]
    assert seg.counts["dormant"] == 0


def test_a_jump_of_the_watermark_runs_every_check_it_passed_in_order() -> None:
    s = Settings(min_events=3, dormant_after_days=5, lapsing_share=0.5)
    seg = Segmenter(s, {}, lambda _u: 0)
    rec = record_factory()
    changes = step(seg, [rec("once", "purchase", T0, 20.0)]).changes
    changes += step(seg, [rec("w", "view", T0 + 30 * DAY)]).changes  # a month of event time in one batch
    once = chain_of(changes, "once")
    assert [d["to_segment"] for d in once] == ["new", "lapsing", "dormant"]
    assert [d["changed_at"] for d in once[1:]] == [format_rfc3339(T0 + int(2.5 * DAY)), format_rfc3339(T0 + 5 * DAY)]


def test_a_silence_the_watermark_passed_before_the_users_next_event_counts_wherever_the_batch_ends() -> None:
    """Another user's event moves the watermark past this user's dormancy; this user's next event follows in the
    same partition. One batch or two, the user went dormant first (a re-application after a crash reads other
    batches than the first run: the change ids must carry the same contents)."""
    s = Settings(min_events=3, dormant_after_days=5, lapsing_share=0.0, lateness_seconds=0)
    outcomes = []
    for split in (3, 2, 1):
        seg = Segmenter(s, {}, lambda _u: 0)
        rec = record_factory()
        records = [rec("u", "view", T0), rec("w", "view", T0 + 6 * DAY), rec("u", "view", T0 + 7 * DAY)]
        changes = step(seg, records[:split]).changes + step(seg, records[split:]).changes
        outcomes.append([c for _, c, _ in changes if codec.loads(c)["user_id"] == "u"])
    moves = [(d["to_segment"], d["changed_at"]) for d in map(codec.loads, outcomes[0])]
    assert moves == [
        ("new", format_rfc3339(T0)),
        ("dormant", format_rfc3339(T0 + 5 * DAY)),
        ("new", format_rfc3339(T0 + 7 * DAY)),
    ]
    assert outcomes[0] == outcomes[1] == outcomes[2]


def test_no_lapsing_stage_when_its_share_is_zero() -> None:
    s = Settings(min_events=3, dormant_after_days=5, lapsing_share=0.0)
    seg = Segmenter(s, {}, lambda _u: 0)
    rec = record_factory()
    changes = step(seg, [rec("once", "purchase", T0, 20.0)]).changes
    changes += step(seg, [rec("w", "view", T0 + 6 * DAY)]).changes
    assert [d["to_segment"] for d in chain_of(changes, "once")] == ["new", "dormant"]


def test_a_user_erased_or_withdrawn_before_any_model_still_gets_a_final_change() -> None:
    s = Settings(min_events=3)
    seg = Segmenter(s, {}, lambda _u: 0)
    rec = record_factory()
    step(seg, [rec("a", "view", T0), rec("b", "view", T0)])
    res = step(seg, [erasure("a", T0 + DAY, 90), consent("b", T0 + DAY, False, 91)])
    finals = {uid: codec.loads(c) for uid, c, _ in res.changes}
    assert {uid: (d["from_segment"], d["to_segment"], d["trigger"]) for uid, d in finals.items()} == {
        "a": ("new", None, "erased"),
        "b": ("new", None, "consent_withdrawn"),
    }
    for d in finals.values():
        jsonschema.validate(d, CHANGE_SCHEMA)
        assert d["sequence"] == 2
    assert seg.counts["new"] == 0


def _update(
    model: ModelSnapshot, ids: tuple[str, ...], centroids: np.ndarray, event: dict[str, Any] | None
) -> ModelSnapshot:
    """``model``'s next version with these personas and one lifecycle event (only what the worker reads of it)."""
    return dataclasses.replace(
        model,
        version=model.version + 1,
        persona_ids=ids,
        persona_names=tuple(f"name of {pid}" for pid in ids),
        centroids=centroids,
        as_of_ms=T0 + DAY,
        changes=(event,) if event else (),
        displaced=displacements(model.displaced, model.version + 1, (event,) if event else ()),
    )


def _lifecycle(kind: str, before: list[str], after: list[str], drawn: tuple[str, ...] = ()) -> dict[str, Any]:
    """An event as the worker reads it; ``drawn``: the personas an emerged one drew its users from."""
    event_id = hashlib.blake2b(f"{kind}{before}{after}".encode(), digest_size=16).hexdigest()
    flows = [{"from": source, "to": after[0], "users": 10} for source in drawn]
    return {
        "kind": kind,
        "event_id": event_id,
        "from": [{"id": p} for p in before],
        "to": [{"id": p} for p in after],
        "flows": flows,
    }


@pytest.mark.parametrize("encoded", [False, True], ids=["objects", "encoded"])
def test_members_of_a_retired_persona_are_placed_again_at_once_and_say_why(encoded: bool) -> None:
    s = Settings(min_events=3, confirmations=3, min_margin=0.0)
    first = two_persona_model(s)
    store: MutableMapping[str, UserState] = EncodedStates({}) if encoded else {}
    seg = Segmenter(s, store, lambda _u: 0)
    seg.set_model(first)
    rec = record_factory()
    for i in range(5):
        step(seg, [rec("v", "view", T0 + i * 3_600_000), rec("b", "purchase", T0 + i * 3_600_000, 50.0)])
    assert (store["v"].segment, store["b"].segment) == ("p1", "p2")
    # v2: the buyers' persona retired, a new id where it was
    retire = _lifecycle("retired", ["p2"], [])
    seg.set_model(_update(first, ("p1", "p3"), first.centroids.copy(), retire))
    before_sweep = copy.deepcopy(store)
    res = seg.sweep({0}, 0.0, set())
    docs = [codec.loads(c) for _, c, _ in res.changes]
    for d in docs:
        jsonschema.validate(d, CHANGE_SCHEMA)
    assert [(d["user_id"], d["from_segment"], d["to_segment"], d["trigger"], d["cause"]) for d in docs] == [
        ("b", "p2", "p3", "model_update", retire["event_id"])
    ]
    assert docs[0]["model_version"] == 2 and docs[0]["changed_at"] == format_rfc3339(T0 + DAY)  # the model's time
    assert "cause" not in codec.loads(step(seg, [rec("n", "view", T0)]).changes[0][1])  # only model updates say it
    # a crash before the states were written: the same sweep again, byte for byte; after they were: nothing
    again = Segmenter(s, before_sweep, lambda _u: 0)
    again.rebuild({0}, {})
    assert seg.model is not None
    again.set_model(seg.model)
    assert [c for _, c, _ in again.sweep({0}, 0.0, set()).changes] == [c for _, c, _ in res.changes]
    store.update(res.dirty)
    seg.rebuild({0}, {})
    assert seg.sweep({0}, 0.0, set()).changes == []


def test_a_split_moves_the_members_nearer_the_offshoot_and_places_the_rest_once() -> None:
    s = Settings(min_events=3, confirmations=3, min_margin=0.0)
    first = two_persona_model(s)
    store: dict[str, UserState] = {}
    seg = Segmenter(s, store, lambda _u: 0)
    seg.set_model(first)
    rec = record_factory()
    for i in range(5):
        step(seg, [rec("v", "view", T0 + i * 3_600_000), rec("b", "purchase", T0 + i * 3_600_000, 50.0)])
    split = _lifecycle("split", ["p2"], ["p2", "p4"])
    # p2 moved away, its offshoot p4 sits where the buyers are: b moves; v (not in p2) is not looked at
    far = first.centroids.copy()
    far[1] += 10.0
    seg.set_model(_update(first, ("p1", "p2", "p4"), np.vstack([far, first.centroids[1:]]), split))
    res = seg.sweep({0}, 0.0, set())
    assert [(codec.loads(c)["user_id"], codec.loads(c)["to_segment"]) for _, c, _ in res.changes] == [("b", "p4")]
    assert set(res.dirty) == {"b"}
    # the other way round: b stays in p2, placed by v3 all the same, and not evaluated for it again
    store.update(res.dirty)
    split = _lifecycle("split", ["p4"], ["p4", "p5"])
    assert seg.model is not None
    seg.set_model(_update(seg.model, ("p1", "p2", "p4", "p5"), np.vstack([far, first.centroids[1:], far[1:]]), split))
    res = seg.sweep({0}, 0.0, set())
    assert res.changes == [] and store["b"].segment == "p4" and res.dirty["b"].model_version == 3
    store.update(res.dirty)
    assert seg.sweep({0}, 0.0, set()).dirty == {}


def test_a_worker_that_skipped_the_version_of_a_split_still_moves_its_members_with_its_cause() -> None:
    first, seg = _viewer_and_buyer()
    far = first.centroids.copy()
    far[1] += 10.0
    split = _lifecycle("split", ["p2"], ["p2", "p4"])
    v2 = _update(first, ("p1", "p2", "p4"), np.vstack([far, first.centroids[1:]]), split)
    v3 = _update(v2, v2.persona_ids, v2.centroids, None)  # published after v2 before this worker looked again
    assert v3.changes == () and v3.displaced == {"p2": Displacement(2, split["event_id"], ("p4",))}
    seg.set_model(v3)
    assert seg.sweep({0}, 0.0, set(), since=2).changes == []  # a worker that used v2 placed them then
    moved = [codec.loads(c) for _, c, _ in seg.sweep({0}, 0.0, set(), since=1).changes]
    assert [(c["user_id"], c["to_segment"], c["model_version"], c["cause"]) for c in moved] == [
        ("b", "p4", 3, split["event_id"])
    ]


def test_members_nearer_a_persona_that_emerged_move_to_it_at_once_and_no_one_else_moves() -> None:
    first, seg = _viewer_and_buyer()
    # p3 emerges where the buyers are, drawing from p2; p2 moves away, nearer the viewers than p1 is (v stays:
    # an emergence opens the way to the new persona only)
    emerged = _lifecycle("emerged", [], ["p3"], drawn=("p1", "p2"))
    near_viewers = first.centroids[0] + 0.01
    seg.set_model(
        _update(first, ("p1", "p2", "p3"), np.vstack([first.centroids[0], near_viewers, first.centroids[1]]), emerged)
    )
    assert seg.model is not None and set(seg.model.displaced) == {"p1", "p2"}
    moved = [codec.loads(c) for _, c, _ in seg.sweep({0}, 0.0, set(), since=1).changes]
    assert [(c["user_id"], c["from_segment"], c["to_segment"], c["cause"]) for c in moved] == [
        ("b", "p2", "p3", emerged["event_id"])
    ]


def test_displacements_of_one_version_combine_and_old_ones_are_dropped() -> None:
    split = _lifecycle("split", ["p1"], ["p1", "p5"])
    emerged = _lifecycle("emerged", [], ["p6"], drawn=("p1", "p2"))
    retired = _lifecycle("retired", ["p3"], [])
    merged = _lifecycle("merged", ["p4", "p2"], ["p2"])
    old = {"p9": Displacement(1, "e" * 32)}
    d = displacements(old, 70, (split, emerged, merged, retired))
    assert d == {
        "p1": Displacement(70, split["event_id"], ("p5", "p6")),  # both ways open, the first event named
        "p2": Displacement(70, emerged["event_id"], ("p6",)),  # the merge's persona stays: only the emergence
        "p3": Displacement(70, retired["event_id"]),
        "p4": Displacement(70, merged["event_id"]),
    }  # p9's, 69 versions old, dropped (DISPLACED_VERSIONS)
    assert displacements(old, 64, ())["p9"].version == 1


def _viewer_and_buyer() -> tuple[ModelSnapshot, Segmenter]:
    """The two-persona model and a segmenter under it holding a viewer ``v`` (p1) and a buyer ``b`` (p2)."""
    s = Settings(min_events=3, confirmations=3, min_margin=0.0)
    first = two_persona_model(s)
    seg = Segmenter(s, {}, lambda _u: 0)
    seg.set_model(first)
    rec = record_factory()
    for i in range(5):
        step(seg, [rec("v", "view", T0 + i * 3_600_000), rec("b", "purchase", T0 + i * 3_600_000, 50.0)])
    return first, seg
