"""Shared fixtures: one real (embedded Tansu) Kafka broker for the whole session; factories for unique topic
sets and worker processes. Integration tests never mock Kafka and never skip: no broker is a failure."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings

from worker.broker import EmbeddedBroker, free_port
from worker.kafkaio import create_topics
from worker.process import WorkerProcess
from worker.settings import Settings

# The property tests' profile: no example database (a clean clone has none, and a failure must replay from the
# seed alone), no per-example deadline (two shared cores), the failing example printed as a blob too.
hypothesis_settings.register_profile("ci", database=None, deadline=None, print_blob=True)


@pytest.hookimpl(tryfirst=True)  # before hypothesis' own plugin reads the options
def pytest_configure(config: pytest.Config) -> None:
    """Every run draws one hypothesis seed unless given one, and says it in the report header: a failure is
    replayed with ``pytest --hypothesis-seed=N``."""
    if config.getoption("hypothesis_seed") is None:
        config.option.hypothesis_seed = str(random.SystemRandom().randrange(1 << 32))
    if config.getoption("hypothesis_profile") is None:
        config.option.hypothesis_profile = "ci"


def pytest_report_header(config: pytest.Config) -> str:
    seed = config.getoption("hypothesis_seed")
    return f"hypothesis seed {seed} (replay a failure: pytest --hypothesis-seed={seed})"


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_file=log) as b:
        yield b


@pytest.fixture
def bare_settings(broker: EmbeddedBroker, tmp_path: Path) -> Settings:
    """Default settings but for what must be unique per test (app id — consumer group and internal topics —,
    topic names, port, data directory) and a shorter group session (a faster first join); no topic is created."""
    tag = uuid.uuid4().hex[:8]
    return Settings(
        broker=broker.url,
        app_id=f"t-{tag}",
        input_topic=f"events-{tag}",
        output_topic=f"changes-{tag}",
        dlq_topic=f"dlq-{tag}",
        erasure_topic=f"erasures-{tag}",
        membership_topic=f"memberships-{tag}",
        persona_topic=f"personas-{tag}",
        notifications_topic=f"notifications-{tag}",
        web_port=free_port(),
        web_host="127.0.0.1",
        data_dir=str(tmp_path / "data"),
        session_timeout=6.0,
    )


@pytest.fixture
def worker_settings(bare_settings: Settings) -> Settings:
    """Settings of a small fast world (3 partitions, a short warm-up), with the input and output topics created."""
    s = bare_settings.replace(partitions=3, warmup_samples=150, k_max=8)
    create_topics(
        s.bootstrap_servers,
        {t: s.partitions for t in (s.input_topic, s.output_topic, s.dlq_topic, s.erasure_topic)},
    )
    return s


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Any]:
    started: list[WorkerProcess] = []

    def start(settings: Settings, wait: float = 90.0) -> WorkerProcess:
        w = WorkerProcess(settings, dict(os.environ), tmp_path / f"worker-{len(started)}.log")
        started.append(w)
        w.wait_ready(wait)
        return w

    yield start
    for w in started:
        w.stop()
