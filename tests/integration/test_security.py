"""API authentication against running processes: with a token, /users, /personas and /campaigns answer 401 without
it or with a wrong one, and the probes and /metrics stay open."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import poll_until, serving_metrics
from worker.broker import free_port
from worker.process import WorkerProcess
from worker.settings import Settings

pytestmark = pytest.mark.integration

TOKEN = "correct horse battery staple"


def status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        exc.close()
        return int(exc.code)


def test_the_token_guards_the_apis_and_leaves_probes_and_metrics_open(
    worker_settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    s = worker_settings.replace(api_token=TOKEN, triggers_web_port=free_port())
    worker = start_worker(s)
    base = f"http://127.0.0.1:{s.web_port}"
    for path in ("/users/nobody", "/personas"):
        assert status(base + path) == 401
        assert status(base + path, "wrong") == 401
    assert status(base + "/users/nobody", TOKEN) == 404  # through: an unknown user
    assert status(base + "/personas", TOKEN) == 200
    for path in ("/metrics", "/healthz", "/readyz"):
        assert status(base + path) == 200
    rules = tmp_path / "rules.yaml"
    rules.write_text('campaigns: [{name: c, when: {from: "*", to: "*"}}]\n')
    triggers = WorkerProcess(
        s, {}, tmp_path / "triggers.log", command=("triggers", "--rules", str(rules)), port=s.triggers_web_port
    )
    try:
        url = f"http://127.0.0.1:{s.triggers_web_port}"
        poll_until(lambda: serving_metrics(triggers), bool, 30, "the trigger service serving its metrics")
        assert status(url + "/campaigns") == 401
        assert status(url + "/campaigns", TOKEN) == 200
        assert status(url + "/metrics") == 200
    finally:
        triggers.stop()
    assert worker.proc.poll() is None
