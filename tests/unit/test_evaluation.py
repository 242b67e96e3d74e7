from __future__ import annotations

from worker.evaluation.engines import encode, run_core
from worker.evaluation.run import sized, table, target_summary
from worker.evaluation.score import score, verdicts
from worker.evaluation.shadow import compare
from worker.settings import Settings
from worker.synth import generate


def test_core_engine_and_scores_on_the_reference_world() -> None:
    pop = generate(300, 28, seed=4)
    s = sized(Settings(partitions=4), 300)
    out = run_core(s, encode(pop.events))
    assert out.processed == len(pop.events) and out.dead_letters == 0 and out.snapshots
    r = score(pop, out, s)
    assert r["assigned"] == 1.0 and r["ari"] > 0.6 and r["batch_ari"] > 0.6
    assert r["switchers"] > 0 and r["switch_detected"] is not None
    assert r["silent"] > 0 and r["silent_moved"] >= 0.8
    assert 0.0 <= r["id_stability"] <= 1.0 if "id_stability" in r else True
    # the table marks what misses a target, and the summary says so
    bad = {**r, "scenario": "x", "seed": 1, "ari": 0.5, "seconds": 1.0}
    assert "0.50!" in table([bad])
    text, ok = target_summary([bad])
    assert not ok and "ari" in text
    assert verdicts({"ari": 0.9, "spurious_per_user": 0.2}) == {"ari": True, "spurious_per_user": False}


def test_shadow_of_identical_runs_differs_nowhere() -> None:
    pop = generate(200, 28, seed=2)
    s = sized(Settings(partitions=2), 200)
    records = encode(pop.events)
    a, b = run_core(s, records), run_core(s, records)
    r = compare(a, b)
    assert r["migrate_differently"] == 0 and r["same_final_persona"] == 1.0
