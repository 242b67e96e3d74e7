"""The API's documents, pure: a user's and the personas'."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np

from tests.fakes import model_of
from worker.features.state import UserState
from worker.personas.lifecycle import Window, first_lineage, persona_changes
from worker.web.views import history_document, personas_document, user_document

DAY = 86_400_000


def names(segment: str | None) -> str | None:
    return {"p1": "creators", "p2": "readers"}.get(segment or "", segment)


def test_user_document_names_segments_and_lists_recent_changes_newest_first() -> None:
    state = UserState(2)
    state.n, state.value_total, state.first_ts, state.last_ts = 4, 12.5, DAY, 3 * DAY
    state.segment, state.segment_since, state.seq, state.model_version = "p2", 2 * DAY, 2, 3
    state.history = [
        (1, None, "p1", DAY, "event", [("count_7d_post", "up")]),
        (2, "p1", "p2", 2 * DAY, "event", [("count_7d_read", "up"), ("count_7d_post", "down")]),
    ]
    doc = user_document("u1", state, names, 3 * DAY, (DAY, 7 * DAY))
    assert {k: doc[k] for k in ("user_id", "segment", "segment_name", "event_count", "value_total", "changes")} == {
        "user_id": "u1",
        "segment": "p2",
        "segment_name": "readers",
        "event_count": 4,
        "value_total": 12.5,
        "changes": 2,
    }
    assert (doc["segment_since"], doc["features_as_of"]) == ("1970-01-03T00:00:00.000Z", "1970-01-04T00:00:00.000Z")
    assert doc["model_version"] == 3
    assert [(c["sequence"], c["from_segment_name"], c["to_segment_name"]) for c in doc["recent_changes"]] == [
        (2, "creators", "readers"),
        (1, None, "creators"),
    ]
    assert doc["recent_changes"][0]["reasons"] == [
        {"feature": "count_7d_read", "direction": "up"},
        {"feature": "count_7d_post", "direction": "down"},
    ]
    state.model_version, state.segment = -1, None
    doc = user_document("u1", state, names, 3 * DAY, (DAY, 7 * DAY))
    assert (doc["model_version"], doc["segment_since"], doc["segment_name"]) == (None, None, None)


def test_personas_document_without_a_model_lists_the_reserved_segments_that_hold_anyone() -> None:
    doc = personas_document(None, Counter({"new": 3, "dormant": 0}), {"half_lives_days": [1, 7]}, {2, 0})
    assert doc == {
        "model_version": None,
        "time_scales": {"half_lives_days": [1, 7]},
        "sizes_cover_partitions": [0, 2],
        "personas": [{"id": "new", "name": "new", "size": 3, "since": None, "profile": None}],
    }


def test_personas_document_says_since_when_each_persona_has_its_id() -> None:
    first = model_of(1, [[1, 0], [0, 1]], ["p1", "p2"], ["creators", "readers"], as_of_ms=5 * DAY)
    later = dataclasses.replace(first, version=4, as_of_ms=9 * DAY, lineage=first_lineage(first))
    doc = personas_document(later, Counter({"p1": 2}), {}, {0})
    assert [(p["id"], p["size"], p["since"]) for p in doc["personas"]] == [
        ("p1", 2, {"version": 1, "at": "1970-01-06T00:00:00.000Z"}),
        ("p2", 0, {"version": 1, "at": "1970-01-06T00:00:00.000Z"}),
    ]


def test_history_lists_the_kept_versions_and_what_became_of_each_persona() -> None:
    v1 = model_of(1, [[1, 0], [0, 1]], ["p1", "p2"], ["creators", "readers"], as_of_ms=DAY)
    v1 = dataclasses.replace(v1, lineage=first_lineage(v1))
    v2 = model_of(2, [[1, 0], [5, 5]], ["p1", "p3"], ["creators", "sharers"], as_of_ms=2 * DAY)
    window = Window(
        np.array([[1.0, 0.0] + [0.0] * (v1.space.dim - 2)] * 4 + [[0.0, 1.0] + [0.0] * (v1.space.dim - 2)]),
        np.zeros(5, dtype=np.int64),
    )
    changes, lineage = persona_changes(v1, v2, window, 2.5)
    v2 = dataclasses.replace(v2, lineage=lineage, changes=changes)
    doc = history_document([v2, v1, v2])  # (slots in any order; a version once)
    assert [(v["version"], v["personas"], [c["kind"] for c in v["changes"]]) for v in doc["versions"]] == [
        (1, ["p1", "p2"], []),
        (2, ["p1", "p3"], ["emerged", "merged"]),
    ]
    personas = doc["personas"]
    assert (
        personas["p1"]["since"] == {"version": 1, "at": "1970-01-02T00:00:00.000Z"}
        and personas["p1"]["retired"] is None
    )
    assert personas["p3"]["since"]["version"] == 2 and personas["p3"]["name"] == "sharers"
    merged = next(c for c in doc["versions"][1]["changes"] if c["kind"] == "merged")
    assert personas["p2"]["retired"] == {"version": 2, "kind": "merged", "event_id": merged["event_id"]}
    assert personas["p2"]["name"] == "readers" and doc["kept_versions"] == 16
