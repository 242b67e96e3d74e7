"""The operators' view against a real Prometheus (Debian's ``prometheus``) scraping a real worker fed with events:
every expression of every shipped Grafana dashboard and every alert rule's query returns data, and ``promtool``
accepts the shipped rules and configuration."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import BAD, processed, send, wait_for
from worker import codec
from worker.broker import free_port
from worker.kafkaio import produce
from worker.process import WorkerProcess, metric_total, terminate
from worker.settings import Settings
from worker.synth import generate

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).parents[2] / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
# Grafana's built-in variables, as Grafana would fill them in for a one-hour view; $instance is "All"
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s", "$instance": ".*"}
THRESHOLD = re.compile(r"^(?P<query>.*)\s(?:==|!=|>=|<=|>|<)\s*[-+0-9.e]+\s*$", re.DOTALL)


def _binary(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} not found: install Debian's prometheus package (.ci/run does)"
    return path


def dashboard_queries() -> list[tuple[str, str]]:
    """(dashboard: panel, expression) of every target of every panel, Grafana variables substituted."""
    out = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for name, value in GRAFANA_VARIABLES.items():
                    expr = expr.replace(name, value)
                assert "$" not in expr, f"unsubstituted variable in {path.name}: {expr}"
                out.append((f"{board['title']}: {panel['title']}", expr))
    return out


def annotation_queries() -> list[tuple[str, str]]:
    """(dashboard: annotation, expression) of every Prometheus annotation (events marked on the time axis)."""
    out = []
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        for annotation in board.get("annotations", {}).get("list", []):
            out.append((f"{board['title']}: {annotation['name']}", annotation["expr"]))
    return out


def alert_queries() -> list[tuple[str, str]]:
    """(alert, its query without the threshold) of every rule."""
    out = []
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            m = THRESHOLD.match(rule["expr"].strip())
            assert m, f"{rule['alert']}: expression is not '<query> <comparison> <number>'"
            out.append((rule["alert"], m["query"]))
    return out


class Prometheus:
    def __init__(self, workdir: Path, jobs: dict[str, list[str]]) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": t}]} for job, t in jobs.items()],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    _binary("prometheus"),
                    f"--config.file={workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            assert time.monotonic() < deadline, "prometheus not ready after 60 s"
            time.sleep(0.3)

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = codec.loads(resp.read())
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def stop(self) -> None:
        terminate(self.proc, grace=10.0)


@pytest.fixture
def prometheus_on(tmp_path: Path) -> Iterator[Any]:
    started: list[Prometheus] = []

    def start(jobs: dict[str, list[str]]) -> Prometheus:
        p = Prometheus(tmp_path, jobs)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


# the trigger service beside the worker: a campaign with a holdout and a goal, and a second one on the same changes
# that the daily cap of one always holds back (so the skipped counter has data in every run)
TRIGGER_RULES = """
defaults: {max_per_user_per_day: 1}
campaigns:
  - {name: any-move, when: {from: "*", to: "*"}, holdout: 0.5, goal: {event_type: purchase, within: 7d}}
  - {name: also-any-move, when: {from: "*", to: "*"}}
"""


def test_every_dashboard_expression_and_alert_query_returns_data_from_a_real_prometheus(
    worker_settings: Settings, start_worker: Any, prometheus_on: Any, tmp_path: Path
) -> None:
    s = worker_settings.replace(
        notifications_topic=f"{worker_settings.app_id}-notifications", triggers_web_port=free_port()
    )
    rules = tmp_path / "rules.yaml"
    rules.write_text(TRIGGER_RULES)
    pop = generate(250, 21, seed=3)  # personas, moves between them and into dormancy
    send(s, pop.events, wrong_key_every=17)  # some re-routed
    produce(s.bootstrap_servers, s.input_topic, [(b"bad", raw) for raw in BAD])
    worker: WorkerProcess = start_worker(s)
    wait_for(worker, lambda m: processed(len(pop.events))(m) and m.get("segment_worker_model_version", 0) >= 1)
    moves = lambda m: sum(v for k, v in m.items() if "changes_total|" in k and "from_segment=none" not in k)  # noqa: E731
    wait_for(worker, lambda m: moves(m) > 0 and metric_total(m, "segment_worker_events_dead_lettered_total") > 0)
    triggers = WorkerProcess(s, {}, tmp_path / "triggers.log", command=("triggers", "--rules", str(rules)))
    prom = prometheus_on(
        {"segment-worker": [f"127.0.0.1:{s.web_port}"], "segment-worker-triggers": [f"127.0.0.1:{s.triggers_web_port}"]}
    )
    # a little traffic while Prometheus scrapes, so rates and latency quantiles have samples in their windows
    last = max(e["timestamp"] for e in pop.events if isinstance(e["timestamp"], int))
    users = sorted({e["user_id"] for e in pop.events})[:20]
    deadline = time.monotonic() + 90
    step = 0
    while True:
        step += 1
        send(s, [{"user_id": u, "event_type": "view", "timestamp": last + step * 1000} for u in users])
        time.sleep(1.0)
        scrapes = prom.query('up{job="segment-worker"}[30s]')
        seen = len(scrapes[0]["values"]) if scrapes else 0
        if seen >= 12:
            break
        assert time.monotonic() < deadline, f"Prometheus scraped the worker {seen} times in 30 s windows; 12 wanted"
    queries = dashboard_queries() + alert_queries()
    assert len(dashboard_queries()) >= 20 and len(alert_queries()) >= 7
    try:
        empty = [(where, expr) for where, expr in queries if not prom.query(expr)]
        # an annotation marks events this world may have none of (persona lifecycle): Prometheus must accept it
        assert annotation_queries()
        for _, expr in annotation_queries():
            prom.query(expr)  # (a query Prometheus refuses fails here)
    finally:
        triggers.stop()
    assert not empty, "queries without data:\n" + "\n".join(f"  {w}: {e}" for w, e in empty)


def test_promtool_accepts_the_shipped_rules_and_config() -> None:
    promtool = _binary("promtool")
    for args in (["check", "rules", str(ALERTS)], ["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")]):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
