"""Persona lifecycle events through the real pipeline: a worker on an empty broker, the `emerging` world (a fifth
persona appears mid-stream with new users), the persona-change topic read back with a plain consumer."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jsonschema
import pytest

from worker import codec
from worker.evaluation.engines import run_pipeline
from worker.evaluation.run import sized
from worker.kafkaio import read_all
from worker.settings import Settings
from worker.synth.population import generate_world
from worker.synth.scenarios import world

pytestmark = pytest.mark.integration

SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "persona-change.v1.json").read_text())


def test_the_persona_that_emerges_mid_stream_is_announced_on_the_topic(bare_settings: Settings, tmp_path: Path) -> None:
    """Exactly one `emerged` event, once, after the model that holds the persona, keyed by its id; no other
    lifecycle event (the four first personas stay). The worker created the topic itself."""
    s = sized(bare_settings, 1000)
    events = generate_world(world("emerging", 1), 1000, 28, 1).events
    out = run_pipeline(
        s, events, dict(os.environ), tmp_path, s.bootstrap_servers, lambda _m: None, time.monotonic() + 600
    )
    records = read_all(s.bootstrap_servers, s.persona_topic)
    announced = [codec.loads(r.value) for r in records]
    for e in announced:
        jsonschema.validate(e, SCHEMA)
    assert [(e["kind"], [p["id"] for p in e["to"]]) for e in announced] == [("emerged", ["p5"])]
    (emerged,) = announced
    assert records[0].key == b"p5"
    model = next(m for m in out.snapshots if m.version == emerged["model_version"])
    assert model.changes == (emerged,) and "p5" in model.persona_ids and "p5" not in out.snapshots[0].persona_ids
    assert model.lineage["p5"].since_version == model.version
    assert sum(f["users"] for f in emerged["flows"]) == emerged["to"][0]["users"] > 100
    assert out.extra["metrics"].get("segment_worker_persona_changes_total|kind=emerged") == 1
