"""Quality commands end to end: ``evaluate`` on the real pipeline (reduced size), ``replay --shadow``, and a real
public purchase log (CDNOW, shipped in the ``lifetimes`` wheel) through ``replay`` + ``run``."""

from __future__ import annotations

import csv
import os
import statistics
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import latest_changes, poll_until
from worker import codec
from worker.broker import EmbeddedBroker
from worker.evaluation.predictive import compare, load_cdnow, purchase_events
from worker.evaluation.score import TARGETS, misses
from worker.kafkaio import read_all
from worker.process import WorkerProcess, metric_total
from worker.settings import Settings

pytestmark = pytest.mark.integration


def _cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "worker", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_evaluate_runs_the_pipeline_and_scores(tmp_path: Path) -> None:
    """The switching world (README's reference: every target applies to it) through the real pipeline at README's
    size, seed 1: every target met, as in README's pipeline table. The other worlds are held to the targets on the
    core engine (tests/quality), which runs the same code in-process in a fraction of the time."""
    out = tmp_path / "eval.json"
    proc = _cli("evaluate", "--scenarios", "switching", "--seeds", "1", "--json", str(out), cwd=tmp_path)
    assert "targets (default settings" in proc.stdout and "switching" in proc.stdout
    (r,) = codec.loads(out.read_bytes())["runs"]
    assert (r["engine"], r["scenario"], r["users"], r["assigned"]) == ("pipeline", "switching", 1000, 1.0)
    assert misses(r) == {}, f"targets {TARGETS}"
    assert r["switch_lag_hours_p50"] > 0 and r["model_versions"] >= 1


def test_shadow_reports_identical_and_different_candidates(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    _cli("generate", "--users", "500", "--days", "28", "--seed", "5", "-o", str(events), cwd=tmp_path)
    same = tmp_path / "same.env"
    same.write_text("# nothing changed\n")
    other = tmp_path / "other.env"
    other.write_text("SEGMENT_WORKER_K_MAX=2\nK_MIN=2\n")
    report_same = tmp_path / "same.json"
    proc = _cli("replay", str(events), "--shadow", str(same), "--shadow-json", str(report_same), cwd=tmp_path)
    assert "users who migrate differently: 0" in proc.stdout
    same_report = codec.loads(report_same.read_bytes())
    assert same_report["final_agreement_ari"] == 1.0 and same_report["users_differing"] == []
    report_other = tmp_path / "other.json"
    _cli("replay", str(events), "--shadow", str(other), "--shadow-json", str(report_other), cwd=tmp_path)
    r = codec.loads(report_other.read_bytes())
    assert len(r["candidate"]["personas"]) == 2 < len(r["current"]["personas"])
    assert r["migrate_differently"] > 0
    assert all(d["current"] != d["candidate"] for d in r["users_differing"])


def _cdnow_csv(dest: Path) -> dict[str, list[tuple[str, float]]]:
    """CDNOW's 1/10 sample (2,357 customers, 1997-01 to 1998-06) as the CSV that ``replay`` reads."""
    purchases: dict[str, list[tuple[str, float]]] = defaultdict(list)
    with dest.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["user_id", "event_type", "timestamp", "value"])
        for e in purchase_events(load_cdnow()):
            out.writerow([e["user_id"], e["event_type"], e["timestamp"], e["value"]])
            purchases[e["user_id"]].append((e["timestamp"], e["value"]))
    return purchases


def test_real_purchase_log_with_default_settings(
    tmp_path: Path, broker: EmbeddedBroker, bare_settings: Settings
) -> None:
    """CDNOW's sample with no setting changed: every customer ends in a segment, 3 to 12 segments, and they tell
    customers apart (mean purchase count or spend differ at least 2x)."""
    purchases = _cdnow_csv(tmp_path / "cdnow.csv")
    events = sum(len(p) for p in purchases.values())
    assert len(purchases) > 2000 and events > 6000
    s = bare_settings
    worker = WorkerProcess(s, dict(os.environ), tmp_path / "worker.log")
    try:
        worker.wait_ready(90)
        _cli("replay", str(tmp_path / "cdnow.csv"), "--broker", broker.url, "--topic", s.input_topic, cwd=tmp_path)
        poll_until(
            worker.metrics,
            lambda m: metric_total(m, "segment_worker_events_processed_total") >= events,
            180,
            "the whole log applied",
        )

        def last_changes() -> dict[str, dict[str, Any]]:
            return latest_changes(read_all(broker.bootstrap, s.output_topic))

        def settled(last: dict[str, dict[str, Any]]) -> bool:
            # every customer placed as the worker counts them, by a model: the whole log can be applied before
            # the trainer has read the samples it fits on, and until then every customer is rightly `new`
            m = worker.metrics()
            sizes = {k.split("segment=")[1]: v for k, v in m.items() if "persona_users|" in k}
            placed = Counter(c["to_segment"] for c in last.values())
            modelled = m.get("segment_worker_model_version", 0) >= 1 and set(placed) - {"new", "lapsing", "dormant"}
            return (
                bool(modelled)
                and set(last) == set(purchases)
                and placed == Counter({k: int(v) for k, v in sizes.items() if v})
            )

        last = poll_until(last_changes, settled, 180, "every customer in a segment")
    finally:
        worker.stop()
    by_segment: dict[str, list[str]] = defaultdict(list)
    for uid, c in last.items():
        assert c["to_segment"] is not None
        by_segment[c["to_segment"]].append(uid)
    assert 3 <= len(by_segment) <= 12, {k: len(v) for k, v in by_segment.items()}
    assert any(k not in ("new", "dormant") for k in by_segment), "no persona: the model was never fitted"
    counts = [statistics.mean(len(purchases[u]) for u in uids) for uids in by_segment.values()]
    spend = [statistics.mean(sum(v for _, v in purchases[u]) for u in uids) for uids in by_segment.values()]
    assert max(counts) >= 2 * min(counts) or max(spend) >= 2 * min(spend), (counts, spend)


def test_segments_predict_who_buys_again_nearly_as_well_as_bg_nbd() -> None:
    """Segments learned from CDNOW's first 39 weeks with default settings, each customer scored by their segment's
    share of customers who buy in the next 39: the AUC reaches 0.97 x BG/NBD's (fitted on the same weeks; 0.982 x
    measured on the sample, 0.964 x on the whole log, see README "Do segments predict?")."""
    r = compare(Settings(), load_cdnow())
    assert r["customers"] == 2357 and r["bgnbd_auc"] == pytest.approx(0.7725, abs=0.002)
    assert r["recency_auc"] == pytest.approx(0.7714, abs=0.002)
    assert r["ratio"] >= 0.97, r
    assert set(r["segments"]) - {"new", "lapsing", "dormant"}, r  # the model placed customers in personas
