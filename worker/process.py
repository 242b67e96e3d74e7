"""A ``segment-worker run`` child process and its HTTP API: used by the demo, the benches and the tests."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from worker import codec
from worker.errors import SegmentWorkerError
from worker.settings import Settings


def metric_total(m: dict[str, float], name: str) -> float:
    """Sum of a metric over all its label sets in a :meth:`WorkerProcess.metrics` dict."""
    return sum(v for k, v in m.items() if k == name or k.startswith(name + "|"))


class WorkerProcess:
    """A ``segment-worker run`` child process and its HTTP API."""

    def __init__(
        self,
        settings: Settings,
        environ: dict[str, str],
        log_path: Path,
        command: Sequence[str] = ("run",),
        port: int | None = None,
    ) -> None:
        """``segment-worker <command>`` (default ``run``) in a child process with these settings; its HTTP API on
        ``port`` (default the worker's ``web_port``)."""
        self.base = f"http://127.0.0.1:{port or settings.web_port}"
        self.log_path = log_path
        env = {**environ, **settings.to_env()}
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "worker", *command], env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def get(self, path: str, retry_for: float = 15.0, raw: bool = False) -> Any:
        """GET and decode (``raw``: the body as is); a 503 (a rebalance under way) is retried after its Retry-After
        for ``retry_for`` s."""
        deadline = time.monotonic() + retry_for
        while True:
            try:
                with urllib.request.urlopen(self.base + path, timeout=5) as resp:
                    body = resp.read()
                return body if raw or path == "/metrics" else codec.loads(body)
            except urllib.error.HTTPError as exc:
                exc.close()  # it holds the response's socket open until collected
                if exc.code != 503 or time.monotonic() > deadline:
                    raise
                time.sleep(float(exc.headers.get("Retry-After") or 1))

    def status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(self.base + path, timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            return int(exc.code)

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(self.get("/metrics").decode()):
            for sample in family.samples:
                key = sample.name + "".join(f"|{k}={v}" for k, v in sorted(sample.labels.items()))
                out[key] = sample.value
        return out

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SegmentWorkerError(f"worker exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if self.get("/healthz").get("partitions"):
                    return
            except (OSError, urllib.error.URLError, ValueError):
                pass
            time.sleep(0.5)
        raise SegmentWorkerError(f"worker not ready after {timeout:.0f}s; see {self.log_path}")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        terminate(self.proc, grace=20.0)


def terminate(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM, then SIGKILL if the process has not exited after ``grace`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
