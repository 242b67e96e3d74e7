"""The documented commands, run as a newcomer would: the demo, and the README's examples."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser import shown
from worker import codec
from worker.broker import EmbeddedBroker
from worker.evaluation.score import TARGETS
from worker.kafkaio import create_topics, read_all
from worker.settings import Settings

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[2]


def test_demo_runs_and_summarises(tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "demo", "--users", "240", "--days", "28", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "segment-worker demo summary" in proc.stdout
    assert "personas found" in proc.stdout and "adjusted Rand index" in proc.stdout
    assert "\npersona changes: " in proc.stdout
    summary = codec.loads(out.read_bytes())
    agree = summary["agreement"]
    assert agree["assigned"] == agree["users"] == 240
    assert summary["dead_letters"] == 5
    # README's targets for what this world lets the demo meet: ARI and silent users moved. Each non-shopping
    # persona is found; README's demo section names the miss: the two shopping personas often come out as one
    # (so switches between them go unseen: 16-17 of 19 detected in three runs here, under the 0.90 target, which the
    # deterministic core test in tests/unit/test_evaluation.py asserts as a miss on this world).
    assert agree["ari"] >= TARGETS["ari"][1]
    assert agree["silent_moved"] >= TARGETS["silent_moved"][1] * agree["silent"] > 0
    found = {p["truth"] for p in agree["purity"].values()}
    assert {"creators", "readers", "social consumers", "dormant"} <= found
    assert found & {"big spenders", "bargain hunters"}
    # the run's personas page (written by default, in the current directory), as a browser shows it
    page = shown(tmp_path / "personas.html")
    assert sum(c.users for c in page.cards) == 240  # every user, in the segment of their last change
    assert page.flows and page.scripts == 0 and page.fetches == []


def readme_examples() -> list[str]:
    """Shell lines of the README's "Examples" section (fenced ``bash`` blocks), comments dropped."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Examples", 1)[1].split("\n## ", 1)[0]
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        lines += [ln for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return lines


def test_readme_examples_run(broker: EmbeddedBroker, tmp_path: Path) -> None:
    lines = readme_examples()
    assert any(ln.startswith("segment-worker generate") for ln in lines)
    env = {**os.environ, "SEGMENT_WORKER_BROKER": broker.url, "SEGMENT_WORKER_INPUT_TOPIC": "readme-events"}
    bindir = Path(sys.executable).parent
    env["PATH"] = f"{bindir}{os.pathsep}{env['PATH']}"
    for line in lines:
        proc = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{line}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    produced = read_all(broker.bootstrap, "readme-events")
    jsonl = sum(len(p.read_text().splitlines()) for p in tmp_path.glob("*.jsonl"))
    csv_rows = sum(len(p.read_text().splitlines()) - 1 for p in tmp_path.glob("*.csv"))  # minus the header
    expected = jsonl + csv_rows
    assert len(produced) == expected > 0


def test_run_refuses_an_erasure_topic_partitioned_unlike_the_input(worker_settings: Settings) -> None:
    s = worker_settings.replace(erasure_topic=f"{worker_settings.app_id}-one-partition")
    create_topics(s.bootstrap_servers, {s.erasure_topic: 1})
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "run"],
        env={**os.environ, **s.to_env()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{s.erasure_topic} has 1 partition, expected {s.partitions}" in proc.stderr
    assert f"SEGMENT_WORKER_PARTITIONS={s.partitions}" in proc.stderr
