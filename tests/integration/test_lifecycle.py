"""Persona lifecycle events through the real pipeline: a worker on an empty broker, the `emerging` world (a fifth
persona appears mid-stream with new users) and the `split` world (part of one persona's members take up another
behaviour), the persona-change and segment-change topics read back with a plain consumer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.browser import shown
from tests.helpers import latest_changes, poll_until
from worker import codec
from worker.evaluation.engines import Outcome, encode, run_pipeline
from worker.evaluation.run import sized
from worker.events.timefmt import parse_timestamp
from worker.kafkaio import produce, read_all
from worker.process import WorkerProcess
from worker.settings import Settings
from worker.synth.population import generate_world
from worker.synth.scenarios import world

pytestmark = pytest.mark.integration

SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "persona-change.v1.json").read_text())


def _run(world_name: str, seed: int, users: int, s: Settings, tmp_path: Path) -> tuple[Outcome, list[dict[str, Any]]]:
    """The world's 28 days through a worker; the outcome and the persona-change events on their topic (each
    checked against the schema)."""
    events = generate_world(world(world_name, seed), users, 28, seed).events
    out = run_pipeline(
        s, events, dict(os.environ), tmp_path, s.bootstrap_servers, lambda _m: None, time.monotonic() + 600
    )
    records = read_all(s.bootstrap_servers, s.persona_topic)
    announced = [codec.loads(r.value) for r in records]
    for e, r in zip(announced, records, strict=True):
        jsonschema.validate(e, SCHEMA)
        assert r.key == (e["to"] or e["from"])[0]["id"].encode()
    return out, announced


def test_the_persona_that_emerges_mid_stream_is_announced_on_the_topic(bare_settings: Settings, tmp_path: Path) -> None:
    """Exactly one `emerged` event, once, after the model that holds the persona, keyed by its id; no other
    lifecycle event (the four first personas stay). The worker created the topic itself."""
    s = sized(bare_settings, 1000)
    out, announced = _run("emerging", 1, 1000, s, tmp_path)
    assert [(e["kind"], [p["id"] for p in e["to"]]) for e in announced] == [("emerged", ["p5"])]
    (emerged,) = announced
    model = next(m for m in out.snapshots if m.version == emerged["model_version"])
    assert model.changes == (emerged,) and "p5" in model.persona_ids and "p5" not in out.snapshots[0].persona_ids
    assert model.lineage["p5"].since_version == model.version
    assert sum(f["users"] for f in emerged["flows"]) == emerged["to"][0]["users"] > 100
    assert out.extra["metrics"].get("segment_worker_persona_changes_total|kind=emerged") == 1
    # whoever the update moved at once went to the new persona, citing the event (the worker may stop before
    # adopting the version; the split test below waits for the moves)
    moved = {(c["to_segment"], c["cause"]) for c in out.changes if c["trigger"] == "model_update"}
    assert moved <= {("p5", emerged["event_id"])}


def test_a_split_is_announced_and_moves_the_members_it_concerns_at_once_saying_why(
    bare_settings: Settings, tmp_path: Path
) -> None:
    """Exactly one `split` event; the members the model update places in the offshoot move at once (not at their
    next event), each change marked `model_update` with the event's id as `cause`. The worker runs until the
    trainer has got there: its fits trail the stream.

    The stream comes in two parts, the second once a model is in use, as a live stream would: produced whole, the
    fits trail it so far that the worker may adopt the split's version as its first model (it was busy while the
    trainer published four versions in 1.4 s, in one CI run), and a first model places everyone, moving nobody."""
    s = sized(bare_settings, 2000)
    generated = generate_world(world("split", 2), 2000, 28, 2)
    events = generated.events
    # the events before anyone takes up the new behaviour (at World.emerge_at, 0.45 of the span, or later)
    calm_until = generated.start_ms + 0.4 * (generated.end_ms - generated.start_ms)
    calm = sum(1 for e in events if parse_timestamp(e["timestamp"]) < calm_until)
    worker = WorkerProcess(s, dict(os.environ), tmp_path / "worker.log")
    try:
        worker.wait_ready(90)
        produce(s.bootstrap_servers, s.input_topic, encode(events[:calm]))
        poll_until(lambda: worker.get("/personas")["model_version"], bool, 120, "a model before the split")
        produce(s.bootstrap_servers, s.input_topic, encode(events[calm:]))
        poll_until(lambda: _moved_by_split(s), lambda seen: bool(seen[1]), 300, "members moved by a split")
        time.sleep(2.0)  # the sweep's changes go out in one round: all of it read
        (tmp_path / "view.html").write_bytes(worker.get("/personas/view?window=28d", raw=True))
    finally:
        worker.stop()
    split, moved = _moved_by_split(s)  # (read once the worker stopped: the report below reads the same)
    (source,) = [p["id"] for p in split["from"]]
    offshoots = {p["id"] for p in split["to"]} - {source}
    assert Counter(c["from_segment"] for c in moved) == Counter({source: len(moved)})
    # moved by the version that announced the split, or by a later one when the worker skipped it
    assert len({c["model_version"] for c in moved}) == 1 and moved[0]["model_version"] >= split["model_version"]
    assert {c["to_segment"] for c in moved} <= offshoots and len(moved) > 50
    _the_page_shows_the_split(s, tmp_path, split, moved)


def _the_page_shows_the_split(s: Settings, tmp_path: Path, split: dict[str, Any], moved: list[dict[str, Any]]) -> None:
    """The personas page, as headless Chromium shows it: the worker's (``GET /personas/view``; it alone held every
    partition) and the report's (``segment-worker report``, read from the topics): a card per persona of the model,
    the split in the lifecycle, and the moves it made as the model-made part of the flows from the source."""
    report = subprocess.run(
        [sys.executable, "-m", "worker", "report", "-o", str(tmp_path / "report.html")],
        env={**os.environ, **s.to_env()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    assert "1 persona events" in report.stdout
    final = latest_changes(read_all(s.bootstrap_servers, s.output_topic))
    sizes = Counter(c["to_segment"] for c in final.values() if c["to_segment"])
    source = split["from"][0]["id"]
    for name in ("view.html", "report.html"):
        page = shown(tmp_path / name, tmp_path / f"{name}.png")
        assert page.scripts == 0 and page.fetches == [], name  # nothing to run or fetch: it works offline
        assert {p["id"] for p in split["to"]} <= {c.segment for c in page.cards}, name
        assert page.events == ["split"], name
        by_model = Counter(c["to_segment"] for c in moved)
        assert {t: page.flow(source, t, True) for t in by_model} == dict(by_model), name
    report_page = shown(tmp_path / "report.html")
    assert set(sizes) <= {c.segment for c in report_page.cards}
    assert {c.segment: c.users for c in report_page.cards} == {  # the report counts every user's last change
        c.segment: sizes[c.segment] for c in report_page.cards
    }


def _moved_by_split(s: Settings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The one lifecycle event so far, a split, and the changes that cite it (none yet: ``{}`` and ``[]``)."""
    announced = [codec.loads(r.value) for r in read_all(s.bootstrap_servers, s.persona_topic)]
    if not announced:
        return {}, []
    assert [e["kind"] for e in announced] == ["split"]
    changes = [codec.loads(r.value) for r in read_all(s.bootstrap_servers, s.output_topic) if r.value]
    moved = [c for c in changes if c["trigger"] == "model_update"]
    assert all(c["cause"] == announced[0]["event_id"] for c in moved)
    return announced[0], moved
