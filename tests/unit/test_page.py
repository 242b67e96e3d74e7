"""The personas page, pure: the timeline of moves (flows, sizes counted back) and the HTML it draws."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

import numpy as np
import pytest

from tests.fakes import model_of
from worker.errors import ConfigError
from worker.personas.lifecycle import Window, first_lineage, persona_changes
from worker.personas.page import build, render, window_ms
from worker.personas.timeline import HOUR_MS, Flow, Timeline

DAY = 86_400_000


def moves() -> Timeline:
    t = Timeline()
    t.add(None, "new", 0, "event")
    t.add(None, "new", 0, "event")
    t.add(None, "new", 0, "event")
    t.add("new", "p1", 2 * HOUR_MS, "event")
    t.add("new", "p1", 2 * HOUR_MS, "event")
    t.add("new", "p2", 3 * HOUR_MS, "event")
    t.add("p1", "p2", 5 * HOUR_MS, "model_update")
    return t


def test_flows_count_moves_between_segments_and_the_part_a_model_update_made() -> None:
    t = moves()
    assert t.flows() == [Flow("new", "p1", 2, 0), Flow("new", "p2", 1, 0), Flow("p1", "p2", 1, 1)]
    assert t.flows(since_ms=4 * HOUR_MS) == [Flow("p1", "p2", 1, 1)]  # (first appearances are no flow)
    assert t.span == (0, 6 * HOUR_MS)


def test_sizes_are_counted_back_from_the_sizes_now() -> None:
    sizes = moves().sizes({"p1": 1, "p2": 2}, points=6)
    assert sizes.times == tuple(k * HOUR_MS for k in range(1, 7))
    assert sizes.series == {
        "new": (3, 3, 1, 0, 0, 0),
        "p1": (0, 0, 2, 2, 2, 1),
        "p2": (0, 0, 0, 1, 1, 2),
    }
    assert moves().sizes({"p1": 1, "p2": 2}, points=3).times == (2 * HOUR_MS, 4 * HOUR_MS, 6 * HOUR_MS)


def test_a_long_log_coarsens_the_buckets_and_keeps_every_move() -> None:
    t = Timeline(max_buckets=16)
    for hour in range(1000):
        t.add("p1" if hour % 2 else "p2", "p2" if hour % 2 else "p1", hour * HOUR_MS + 1, "event")
    assert len(t._buckets) <= 16 and t.width_ms == 64 * HOUR_MS
    assert sum(f.users for f in t.flows()) == 1000
    assert t.sizes({"p1": 1, "p2": 0}).series["p1"][-1] == 1


def test_window_is_a_duration_or_all() -> None:
    assert window_ms("7d") == 7 * DAY and window_ms("12h") == 12 * HOUR_MS
    assert window_ms(None) is None and window_ms("all") is None
    with pytest.raises(ConfigError):
        window_ms("last week")
    with pytest.raises(ConfigError):
        window_ms("0d")


def split_models() -> tuple[dict[str, object], list[dict[str, object]]]:
    v1 = model_of(1, [[1, 0], [0, 1]], ["p1", "p2"], ["creators", "<script>alert(1)</script>"], as_of_ms=DAY)
    v1 = dataclasses.replace(v1, lineage=first_lineage(v1))
    v2 = model_of(2, [[1, 0], [5, 5]], ["p1", "p3"], ["creators", "sharers"], as_of_ms=2 * DAY)
    rows = [[1.0, 0.0] + [0.0] * (v1.space.dim - 2)] * 4 + [[0.0, 1.0] + [0.0] * (v1.space.dim - 2)]
    changes, lineage = persona_changes(v1, v2, Window(np.array(rows), np.zeros(5, dtype=np.int64)), 2.5)
    return {"v1": v1, "v2": dataclasses.replace(v2, lineage=lineage, changes=changes)}, list(changes)


def test_the_page_draws_a_card_per_segment_the_flows_and_the_lifecycle() -> None:
    models, events = split_models()
    v2 = models["v2"]
    sizes = Counter({"p1": 2, "p3": 1, "new": 0, "dormant": 1})
    timeline = moves()
    timeline.add("p1", "dormant", 4 * HOUR_MS, "silence")
    page = build(v2, sizes, timeline, [*events, *events], scope="test", window_ms=None, now_ms=3 * DAY)  # type: ignore[arg-type]
    html = render(page)
    cards = re.findall(r"<article class='card' data-segment='([^']+)'", html)
    assert cards == ["p1", "p3", "dormant"]  # the model's personas, then the reserved segments holding anyone
    assert "<b>2</b> users · 50.0%" in html and "since v2, 1970-01-03" in html
    flow = r"<g class='flow' data-from='(\w+)' data-to='(\w+)' data-users='(\d+)' data-by-model='(\d)'>"
    flows = re.findall(flow, html)
    assert flows == [("p1", "p2", "1", "1"), ("p1", "dormant", "1", "0")]  # the moves out of a segment
    assert "3 first placements out of new, not drawn" in html  # (not migrations: they would drown them)
    assert html.count("fill='url(#model-made)'") == 1  # the model update's move, hatched
    kinds = re.findall(r"<tr class='event-row' data-kind='(\w+)'>", html)
    assert sorted(kinds) == sorted(e["kind"] for e in events) and len(kinds) == 2  # each event once
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # names are escaped
    assert not re.search(r"(src|href)=", html)  # nothing to fetch: it works offline


def test_a_page_before_any_model_or_move_says_so() -> None:
    html = render(build(None, {}, Timeline(), [], scope="test", window_ms=None, now_ms=0))
    assert "no model yet" in html and "No users placed yet" in html
    assert "No user has moved between personas" in html and "No persona has emerged" in html
