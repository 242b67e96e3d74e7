"""States kept decoded between batches (worker.changes.kept): the same outcome as decoding every time."""

from __future__ import annotations

import random
from collections.abc import MutableMapping

from tests.unit.builders import step, two_persona_model
from worker import codec
from worker.changes import InputRecord, Segmenter
from worker.changes.kept import KeptStates
from worker.features import UserState
from worker.features.wire import EncodedStates, encode
from worker.settings import Settings
from worker.synth import generate


def test_keeps_the_newest_users_up_to_its_size() -> None:
    store = EncodedStates({u: encode(UserState(2)) for u in "abc"})
    kept = KeptStates(store, 2)
    a = kept.get("a")
    assert kept.get("a") is a  # decoded once
    kept.get("b")
    kept.get("c")  # "a" is the oldest: it goes
    assert len(kept) == 2 and kept.get("a") is not a
    fresh = UserState(2)
    kept.wrote({"b": fresh}, ["c"])
    assert kept.get("b") is fresh
    assert kept.get("x") is None and len(kept) == 2


def test_size_zero_keeps_nothing() -> None:
    kept = KeptStates(EncodedStates({"a": encode(UserState(2))}), 0)
    assert kept.get("a") is not kept.get("a") and len(kept) == 0


def _world() -> list[InputRecord]:
    """A small synthetic world's events with erasures, consent withdrawals and re-deliveries mixed in."""
    rng = random.Random(3)
    records: list[InputRecord] = []
    for i, e in enumerate(generate(120, 10, seed=4).events):
        records.append(InputRecord(codec.dumps(e), None, 0, i, 0, i, 0.0))
        if rng.random() < 0.004:  # the user leaves
            uid, t = str(e["user_id"]), e["timestamp"]
            if rng.random() < 0.5:
                body = codec.dumps({"user_id": uid, "requested_at": t})
                records.append(InputRecord(body, None, 0, i, 0, i, 0.0, kind="erasure"))
            else:
                body = codec.dumps({**e, "context": {"consent": {"segmentation": False}}})
                records.append(InputRecord(body, None, 0, i, 0, i, 0.0))
        if rng.random() < 0.01:
            records.append(records[rng.randrange(len(records))])  # a re-delivery
    return records


def _run(store: MutableMapping[str, UserState], records: list[InputRecord], settings: Settings) -> list[bytes]:
    seg = Segmenter(settings, store, lambda _u: 0)
    out: list[bytes] = []
    for k, i in enumerate(range(0, len(records), 300)):
        if k == 5:
            seg.set_model(two_persona_model(settings))
        out += [c for _, c, _ in step(seg, records[i : i + 300]).changes]
    return out


def test_a_world_gives_the_same_changes_and_states_kept_or_not() -> None:
    """Kept for every user, for a few (evicted and decoded again), for none, or a store of objects: byte for byte
    the same changes and the same states at the end."""
    records = _world()
    outcomes = []
    for size in (100_000, 7, 0, None):
        settings = Settings(min_events=3, state_cache_users=size or 0)
        store: MutableMapping[str, UserState] = {} if size is None else EncodedStates({})
        changes = _run(store, records, settings)
        outcomes.append((changes, {u: encode(s) for u, s in store.items()}))
    triggers = {codec.loads(c)["trigger"] for c in outcomes[0][0]}
    assert len(outcomes[0][0]) > 100 and len(outcomes[0][1]) > 50
    assert {"event", "erased", "consent_withdrawn"} <= triggers
    assert all(o == outcomes[0] for o in outcomes[1:])


def test_a_state_read_again_from_the_changelog_is_not_shadowed_by_the_kept_one() -> None:
    """After (re)assignment the table holds what the changelog had (here: the state before the last event); the
    segmenter forgets what it kept, or it would apply the next event to a state the table no longer has."""
    settings = Settings(min_events=3)
    store = EncodedStates({})
    seg = Segmenter(settings, store, lambda _u: 0)
    body = {"user_id": "u", "event_type": "view"}
    rec = [InputRecord(codec.dumps({**body, "timestamp": 1000 * i}), None, 0, i, 0, i, 0.0) for i in range(1, 4)]
    step(seg, rec[:1])
    older = store.data["u"]
    step(seg, rec[1:2])
    store.data["u"] = older  # the changelog's copy misses the second event
    seg.rebuild({0}, {0: 1000})
    step(seg, rec[2:])
    assert store["u"].n == 2  # the first and the third


def test_a_state_not_written_yet_is_read_back_after_it_is_no_longer_kept() -> None:
    """Deferred writes: a user's newest state, pushed out of the kept ones before the caller wrote it, is read
    from what waits for the write, never from the store (older there); an erasure waits as a deletion."""
    store = EncodedStates({u: encode(UserState(2)) for u in "ab"})
    kept = KeptStates(store, 1)
    kept.defer()
    newer = UserState(2)
    newer.n = 7
    kept.wrote({"a": newer}, [])
    kept.get("b")  # "a" is pushed out
    assert len(kept) == 1 and kept.get("a") is newer and kept.peek("a") is newer
    kept.wrote({}, ["b"])
    assert kept.get("b") is None and kept.unwritten == 2
    assert kept.take_unwritten(["b", "x", "b"]) == {"b": None} and kept.unwritten == 1  # some users only
    kept.wrote({}, ["b"])
    assert kept.take_unwritten() == {"a": newer, "b": None} and kept.unwritten == 0
    assert kept.get("b") is not None  # the caller has not deleted it from the store: as stored


def test_without_deferring_nothing_waits() -> None:
    kept = KeptStates(EncodedStates({}), 2)
    kept.wrote({"a": UserState(2)}, ["b"])
    assert kept.unwritten == 0 and kept.take_unwritten() == {}
