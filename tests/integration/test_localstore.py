"""``state_store=rocksdb`` against the real broker: a restart reads the local copy and only the changelog written
after it; a copy that is not a prefix of the changelog is discarded, never trusted."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import local_reads, processed, send, wait_for
from worker import codec
from worker.features import UserState, wire
from worker.localstore import LocalStore
from worker.process import WorkerProcess
from worker.routing import partitioner
from worker.settings import Settings
from worker.synth import generate

pytestmark = pytest.mark.integration


def _counts_exact(worker: WorkerProcess, counts: Counter[str]) -> None:
    wrong = [(u, n) for u, n in counts.items() if worker.get(f"/users/{u}")["event_count"] != n]
    assert not wrong, f"{len(wrong)} users with wrong counts, e.g. {wrong[:3]}; see {worker.log_path}"


def test_restart_reads_the_local_copy_and_a_copy_that_is_not_the_changelogs_prefix_is_discarded(
    worker_settings: Settings, start_worker: Any
) -> None:
    s = worker_settings.replace(state_store="rocksdb")
    pop = generate(200, 14, seed=5)
    counts = Counter(e["user_id"] for e in pop.events)
    send(s, pop.events)
    worker = start_worker(s)
    wait_for(worker, processed(len(pop.events)))
    _counts_exact(worker, counts)
    worker.stop()

    # a restart: every user from the local copy; from the changelog only the record each copy ends at
    worker = start_worker(s)
    assert local_reads(worker) == [(s.partitions, len(counts))]
    _counts_exact(worker, counts)
    uid = pop.events[-1]["user_id"]
    send(s, [{"user_id": uid, "event_type": "view", "timestamp": pop.events[-1]["timestamp"] + 1}])
    counts[uid] += 1
    wait_for(worker, lambda _m: worker.get(f"/users/{uid}")["event_count"] == counts[uid])
    worker.stop()

    # copies that are not this changelog's prefix: one claims records beyond its end, one holds another record
    # at its last offset (a topic deleted and created again). Each carries a state that must not survive.
    part = partitioner(s.partitions)
    victims = [next(u for u in counts if part(u) == p) for p in (0, 1)]
    forged = UserState(len(s.half_lives_ms))
    forged.n = 999_999
    local = LocalStore(Path(s.data_dir) / f"{s.app_id}-state.rocksdb")
    ends = [local.marker("users", p) for p in (0, 1)]
    assert ends[0] is not None and ends[1] is not None
    local.write(
        [
            ("users", 0, ends[0].next_offset + 100, codec.dumps(victims[0]), wire.encode(forged)),
            ("users", 1, ends[1].next_offset - 1, codec.dumps(victims[1]), wire.encode(forged)),
        ]
    )
    local.close()
    worker = start_worker(s)
    log = worker.log_path.read_text()
    assert "users partition 0: local copy discarded (the changelog ends before" in log, log[-3000:]
    assert "users partition 1: local copy discarded (offset" in log, log[-3000:]
    _counts_exact(worker, counts)
