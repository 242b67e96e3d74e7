"""Persona lifecycle events (worker.personas.lifecycle): each kind from a model update built by hand, the wire
contract, and the trainer's events on scenario worlds (one where a persona emerges, stable ones where none may)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from tests.fakes import MODEL_SPACE, model_of
from tests.parallel import Key, submitted
from worker.changes import InputRecord, Segmenter
from worker.clustering.snapshot import Displacement, ModelSnapshot, displacements
from worker.clustering.trainer import Trainer
from worker.evaluation.engines import encode, run_core
from worker.evaluation.run import sized
from worker.personas.lifecycle import Window, first_lineage, persona_changes
from worker.runtime.records import sample_chunks, samples_in
from worker.settings import Settings
from worker.synth.population import generate_world
from worker.synth.scenarios import world

Worlds = dict[Key, Future[Any]]
SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "persona-change.v1.json").read_text())
DIM = MODEL_SPACE.dim
DAY = 86_400_000


def model(version: int, centroids: list[list[float]], ids: list[str], names: list[str] | None = None) -> ModelSnapshot:
    return model_of(version, centroids, ids, names, as_of_ms=version * DAY)


def around(points: list[tuple[float, float, int]], origin: int = 0) -> Window:
    """``n`` users near each (x, y), all with profiles begun at ``origin``."""
    rows = np.zeros((sum(n for _, _, n in points), DIM))
    i = 0
    for x, y, n in points:
        rows[i : i + n, :2] = (x, y)
        i += n
    return Window(rows, np.full(len(rows), origin, dtype=np.int64))


def changes(old: ModelSnapshot, new: ModelSnapshot, window: Window, drift: float = 2.5) -> list[dict[str, Any]]:
    old = dataclasses.replace(old, lineage=old.lineage or first_lineage(old))
    events, _ = persona_changes(old, new, window, drift)
    for e in events:
        jsonschema.validate(e, SCHEMA)
    return list(events)


def kinds(events: list[dict[str, Any]]) -> list[tuple[str, list[str], list[str]]]:
    return [(e["kind"], [p["id"] for p in e["from"]], [p["id"] for p in e["to"]]) for e in events]


def test_nothing_happens_when_the_personas_stay() -> None:
    old = model(1, [[0, 0], [10, 0]], ["p1", "p2"])
    new = model(2, [[0.3, 0], [10, 0.2]], ["p1", "p2"])
    assert changes(old, new, around([(0, 0, 50), (10, 0, 50)])) == []


def test_a_persona_whose_members_diverge_splits() -> None:
    old = model(1, [[0, 0], [10, 0]], ["p1", "p2"])
    new = model(2, [[-2, 0], [10, 0], [2, 0]], ["p1", "p2", "p3"])
    events = changes(old, new, around([(-2, 0, 40), (2, 0, 30), (10, 0, 50)]))
    assert kinds(events) == [("split", ["p1"], ["p1", "p3"])]
    split = events[0]
    assert {(f["from"], f["to"], f["users"]) for f in split["flows"]} == {("p1", "p1", 40), ("p1", "p3", 30)}
    assert [p["users"] for p in split["from"]] == [70] and [p["users"] for p in split["to"]] == [40, 30]
    assert split["to"][1]["reasons"][0]["feature"] == "rate_1d:a"  # what sets p3 apart: more of `a`


def test_a_persona_newcomers_bring_emerges_even_from_one_persona() -> None:
    """The same geometry as a split, but the new persona's users began after p1 did: a behaviour new users
    brought, not p1's members going two ways."""
    old = model(1, [[0, 0], [10, 0]], ["p1", "p2"])
    old = dataclasses.replace(old, lineage=first_lineage(old))
    new = model(2, [[-2, 0], [10, 0], [2, 0]], ["p1", "p2", "p3"])
    members = around([(-2, 0, 40), (10, 0, 50)], origin=0)
    newcomers = around([(2, 0, 30)], origin=old.as_of_ms + DAY)
    window = Window(np.vstack([members.rows, newcomers.rows]), np.concatenate([members.origins, newcomers.origins]))
    assert kinds(changes(old, new, window)) == [("emerged", [], ["p3"])]


def test_a_persona_drawn_from_several_emerges() -> None:
    old = model(1, [[0, 0], [10, 0]], ["p1", "p2"])
    new = model(2, [[0, 0], [10, 0], [5, 8]], ["p1", "p2", "p3"])
    events = changes(old, new, around([(0, 0, 40), (10, 0, 40), (4, 7, 20), (6, 7, 20)]))
    assert kinds(events) == [("emerged", [], ["p3"])]
    assert {(f["from"], f["users"]) for f in events[0]["flows"]} == {("p1", 20), ("p2", 20)}


def test_a_persona_whose_members_go_to_one_other_merges_into_it() -> None:
    old = model(1, [[0, 0], [3, 0], [20, 0]], ["p1", "p2", "p3"])
    new = model(2, [[1.5, 0], [20, 0]], ["p1", "p3"])
    events = changes(old, new, around([(0, 0, 30), (3, 0, 20), (20, 0, 50)]))
    assert kinds(events) == [("merged", ["p2", "p1"], ["p1"])]


def test_a_persona_whose_members_scatter_retires() -> None:
    old = model(1, [[0, 0], [10, 0], [5, 0]], ["p1", "p2", "p3"])
    new = model(2, [[0, 0], [10, 0]], ["p1", "p2"])
    events = changes(old, new, around([(0, 0, 40), (10, 0, 40), (4.9, 0, 10), (5.1, 0, 10)]))
    assert kinds(events) == [("retired", ["p3"], [])]
    assert {(f["to"], f["users"]) for f in events[0]["flows"]} == {("p1", 10), ("p2", 10)}


def test_drift_is_measured_from_where_a_persona_was_last_announced() -> None:
    """Small steps add up: each update moves p1 by 1, the third one passes 2.5 and is announced; the next steps
    count from there."""
    old = model(1, [[0, 0], [20, 0]], ["p1", "p2"])
    old = dataclasses.replace(old, lineage=first_lineage(old))
    window = around([(0, 0, 10), (20, 0, 10)])
    seen = []
    for v in range(2, 7):
        new = model(v, [[float(v - 1), 0], [20, 0]], ["p1", "p2"])
        events, lineage = persona_changes(old, new, window, 2.5)
        seen += [(v, e["kind"], e["distance"]) for e in events]
        old = dataclasses.replace(new, lineage=lineage)
    assert seen == [(4, "drifted", 3.0)]  # v5 and v6 are 1 and 2 from where v4 announced it
    assert old.lineage["p1"].anchor[0] == 3.0 and old.lineage["p1"].since_version == 1


def test_a_new_name_for_the_same_persona_is_a_rename() -> None:
    old = model(1, [[0, 0], [10, 0]], ["p1", "p2"], ["creators", "readers"])
    new = model(2, [[0, 0], [10, 0]], ["p1", "p2"], ["makers", "readers"])
    events = changes(old, new, around([(0, 0, 10), (10, 0, 10)]))
    assert kinds(events) == [("renamed", ["p1"], ["p1"])]
    assert (events[0]["from"][0]["name"], events[0]["to"][0]["name"]) == ("creators", "makers")


def test_ids_are_the_same_for_the_same_version_and_change() -> None:
    old = model(1, [[0, 0], [10, 0]], ["p1", "p2"])
    new = model(2, [[-2, 0], [10, 0], [2, 0]], ["p1", "p2", "p3"])
    window = around([(-2, 0, 40), (2, 0, 30), (10, 0, 50)])
    assert changes(old, new, window) == changes(old, new, window)
    later = dataclasses.replace(new, version=3)
    assert changes(old, new, window)[0]["event_id"] != changes(old, later, window)[0]["event_id"]


def test_lineage_survives_the_wire() -> None:
    old = model(1, [[0, 0], [10, 0]], ["p1", "p2"])
    new = model(2, [[-2, 0], [10, 0], [2, 0]], ["p1", "p2", "p3"])
    events, lineage = persona_changes(
        dataclasses.replace(old, lineage=first_lineage(old)), new, around([(-2, 0, 40), (2, 0, 30)]), 2.5
    )
    displaced = displacements({"p9": Displacement(1, "e" * 32)}, 2, events)
    snap = dataclasses.replace(new, lineage=lineage, changes=events, displaced=displaced)
    back = ModelSnapshot.from_bytes(snap.to_bytes())
    assert back.lineage == lineage and back.changes == events and back.as_of_ms == 2 * DAY
    assert back.displaced == displaced and set(displaced) == {"p9", "p1"}  # p1 split into p1 and p3
    assert lineage["p3"].since_version == 2 and lineage["p2"].since_version == 1


def trained(name: str, seed: int) -> list[ModelSnapshot]:
    """The snapshots of 28 days of world ``name`` (2,000 users) through the core engine (run in a child)."""
    settings = sized(Settings(), 2000)
    return run_core(settings, encode(generate_world(world(name, seed), 2000, 28, seed).events)).snapshots


def handed_out_in_steps() -> list[tuple[int, list[tuple[str, int, int]]]]:
    """The `split` world (seed 2, 2,000 users) folded by a trainer in steps of 8,000 samples, as its host does: the
    versions handed out and their events (kind, version before, version) (run in a child)."""
    settings = sized(Settings(), 2000)
    records = encode(generate_world(world("split", 2), 2000, 28, 2).events)
    segmenter = Segmenter(settings, {}, lambda _u: 0)
    samples = []
    for i in range(0, len(records), 2000):
        batch = [InputRecord(v, k, 0, i + j, 0, i + j, 0.0) for j, (k, v) in enumerate(records[i : i + 2000])]
        res = segmenter.process(batch, 2**62, 0.0)
        segmenter.store.update(res.dirty)
        samples += [sample for chunk in sample_chunks(res.samples) for sample in samples_in(chunk)]
    trainer = Trainer(settings)
    handed = [snap for i in range(0, len(samples), 8000) if (snap := trainer.add(samples[i : i + 8000]))]
    return [
        (s.version, [(e["kind"], e["model_version_before"], e["model_version"]) for e in s.changes]) for s in handed
    ]


JOBS = {  # the job of each test that trains (with its `seed`; the last test names its world)
    "test_the_persona_that_appears_mid_stream_is_announced_once": "emerging",
    "test_a_persona_whose_users_go_two_ways_is_announced_as_split": "split",
    "test_no_lifecycle_event_where_the_personas_stay": "",
}
STEPS = (handed_out_in_steps,)


@pytest.fixture(scope="module")
def worlds(request: pytest.FixtureRequest) -> Iterator[dict[Key, Future[Any]]]:
    """What the selected tests train, all at once, two at a time (each world ~15 s alone)."""

    def job(test: str, params: dict[str, Any]) -> Key | None:
        if test == "test_a_split_among_versions_one_step_of_the_trainer_fits_is_announced_with_the_version_handed_out":
            return STEPS
        if test not in JOBS:
            return None
        return (trained, params.get("name") or JOBS[test], params["seed"])

    with submitted(request, job) as runs:
        yield runs


@pytest.mark.parametrize("seed", [1, 2])
def test_the_persona_that_appears_mid_stream_is_announced_once(seed: int, worlds: Worlds) -> None:
    """`emerging`: a fifth persona appears mid-stream with new users. The trainer announces it as emerged, once,
    with the users it drew from the other personas, and nothing else new or gone."""
    snaps = worlds[(trained, "emerging", seed)].result()
    events = [e for snap in snaps for e in snap.changes if e["kind"] != "drifted"]
    assert [(e["kind"], len(e["to"])) for e in events] == [("emerged", 1)]
    emerged = events[0]
    assert emerged["to"][0]["id"] not in snaps[0].persona_ids
    assert sum(f["users"] for f in emerged["flows"]) == emerged["to"][0]["users"] > 100


@pytest.mark.parametrize("seed", [2, 3])
def test_a_persona_whose_users_go_two_ways_is_announced_as_split(seed: int, worlds: Worlds) -> None:
    """`split`: half the users of the largest persona take up a new behaviour mid-stream. The trainer announces one
    split of that persona into itself and a new id, drawn from it alone. (Seed 1 draws a new behaviour close enough
    to another persona that its users just move there: no new persona, no event.)"""
    snaps = worlds[(trained, "split", seed)].result()
    events = [e for snap in snaps for e in snap.changes]
    assert [(e["kind"], len(e["from"]), len(e["to"])) for e in events] == [("split", 1, 2)]
    (split,) = events
    source, offshoot = split["from"][0]["id"], split["to"][1]["id"]
    assert split["to"][0]["id"] == source and offshoot not in snaps[0].persona_ids
    assert {f["from"] for f in split["flows"]} == {source}
    assert min(f["users"] for f in split["flows"]) > 200  # both ways taken by many
    assert snaps[-1].ancestry == {offshoot: (source,)}  # a rule `{lineage: <source>}` follows the offshoot too


def test_a_split_among_versions_one_step_of_the_trainer_fits_is_announced_with_the_version_handed_out(
    worlds: Worlds,
) -> None:
    """The trainer's host folds up to 32,000 samples a step and publishes the newest version it fits: the events
    of that version compare it with the version published before (a split in a version in between was lost)."""
    handed = worlds[STEPS].result()
    assert [version for version, _ in handed] == [3, 7, 10]  # (versions 4-6 and 8-9 were fitted, never published)
    assert handed[2][1] == [("split", 7, 10)]


@pytest.mark.parametrize(("name", "seed"), [("stable", 1), ("stable", 2), ("switching", 1)])
def test_no_lifecycle_event_where_the_personas_stay(name: str, seed: int, worlds: Worlds) -> None:
    snaps = worlds[(trained, name, seed)].result()
    assert len(snaps) >= 8  # 28 days of model updates
    assert [e["kind"] for snap in snaps for e in snap.changes] == []
