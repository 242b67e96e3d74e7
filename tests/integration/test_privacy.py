"""Erasure, consent and pseudonyms on a running worker and trigger service, against the real broker: erased users
leave a tombstone on the changelog, a 404 and one final change, their trigger state is deleted, a restart does not
bring them back and their later events start a fresh profile; withdrawn consent leaves only a marker; no raw user
id reaches the outputs or the state."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    CHANGE_SCHEMA,
    assert_topic_configs,
    poll_until,
    processed,
    read_chains,
    send,
    service_setup,
    start_service,
    wait_for,
)
from worker import codec
from worker.events.pseudonym import pseudonymizer
from worker.events.timefmt import format_rfc3339, parse_timestamp
from worker.kafkaio import produce, read_all
from worker.process import metric_total
from worker.settings import Settings
from worker.synth import generate
from worker.topics import trigger_topics

pytestmark = pytest.mark.integration

KEY = "a secret only the operator holds"
RULES = """
campaigns:
  - name: welcome
    when: {from: null, to: "*"}
    channel: push
"""


def latest_per_key(bootstrap: str, topic: str) -> dict[bytes, bytes | None]:
    """What compaction keeps of a topic: the newest value per key (None: a tombstone)."""
    return {r.key: r.value for r in read_all(bootstrap, topic) if r.key is not None}


def test_erasure_consent_and_pseudonyms(worker_settings: Settings, start_worker: Any, tmp_path: Path) -> None:
    s, rules_file = service_setup(
        worker_settings, tmp_path, RULES, state_store="rocksdb", pseudonym_key=KEY, dormant_after_days=0
    )
    bootstrap = s.bootstrap_servers
    p = pseudonymizer(KEY)
    pop = generate(200, 21, seed=5)
    send(s, pop.events)
    worker = start_worker(s)
    service = start_service(s, rules_file, tmp_path / "triggers.log")
    try:
        wait_for(worker, lambda m: processed(len(pop.events))(m) and m.get("segment_worker_model_version", 0) >= 1)
        wait_for(worker, lambda m: metric_total(m, "segment_worker_persona_users") >= 150)
        # the first model's sweep places users after their events were delivered: wait for it on the topic
        chains = poll_until(
            lambda: read_chains(bootstrap, s.output_topic, CHANGE_SCHEMA),
            lambda chains: sum(_last(c)["to_segment"] not in (None, "new") for c in chains.values()) >= 150,
            60,
            "150 users in a persona on the change topic",
        )
        raw_ids = {e["user_id"] for e in pop.events}
        assert set(chains) <= {p(u) for u in raw_ids}  # outputs name users by pseudonym only
        assert all(len(u) == 32 for u in chains)
        with_persona = sorted(u for u in raw_ids if p(u) in chains)
        erased, withdrawn, kept = with_persona[:4], with_persona[4:6], with_persona[6]
        wait_for(service, lambda m: metric_total(m, "segment_worker_triggers_users") >= len(chains), timeout=60)

        # four erasure requests: three by `segment-worker erase` as an operator runs it, one produced keyed wrongly
        # (re-routed), and one that is not a request; two users withdraw consent
        t = max(parse_timestamp(e["timestamp"]) for e in pop.events)
        erase = [sys.executable, "-m", "worker", "erase", *erased[1:], "--request-id", "ticket-7"]
        proc = subprocess.run(erase, env={**os.environ, **s.to_env()}, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and f"3 erasure requests to {s.erasure_topic}" in proc.stderr, proc.stderr
        request = codec.dumps({"user_id": erased[0], "requested_at": format_rfc3339(t)})
        produce(bootstrap, s.erasure_topic, [(b"wrong-key", request), (b"x", b'{"requested_at": 0}')])
        withdraw = {"event_type": "view", "timestamp": t, "context": {"consent": {"segmentation": False}}}
        send(s, [{**withdraw, "user_id": u} for u in withdrawn])
        wait_for(
            worker,
            lambda m: (
                metric_total(m, "segment_worker_erasures_total") >= len(erased)
                and metric_total(m, "segment_worker_consent_withdrawals_total") >= len(withdrawn)
            ),
            timeout=60,
        )
        # events of users without consent are not applied
        send(s, [{"user_id": u, "event_type": "post", "timestamp": t + 1000} for u in withdrawn])
        wait_for(worker, lambda m: metric_total(m, "segment_worker_events_excluded_total") >= len(withdrawn), 60)

        for u in erased:
            assert worker.status(f"/users/{u}") == 404
        for u in withdrawn:
            assert worker.get(f"/users/{u}") == {"user_id": p(u), "consent": {"segmentation": False}}
        assert worker.get(f"/users/{kept}")["user_id"] == p(kept)  # asked by raw id, answered by pseudonym

        leaving = [p(u) for u in (*erased, *withdrawn)]
        after = poll_until(
            lambda: read_chains(bootstrap, s.output_topic, CHANGE_SCHEMA),
            lambda chains: all(_last(chains[u])["to_segment"] is None for u in leaving),
            60,
            "the final change of every erased and withdrawn user on the topic",
        )
        for u, why in [*((u, "erased") for u in erased), *((u, "consent_withdrawn") for u in withdrawn)]:
            last = after[p(u)][-1]
            assert (last["to_segment"], last["trigger"]) == (None, why)
            assert last["from_segment"] == chains[p(u)][-1]["to_segment"]
            assert last["sequence"] == chains[p(u)][-1]["sequence"] + 1
        dead = [
            r for r in read_all(bootstrap, s.dlq_topic) if r.headers["dlq.source.topic"] == s.erasure_topic.encode()
        ]
        assert [r.headers["dlq.reason"] for r in dead] == [b"missing_field"]

        # the changelog ends each erased user with a tombstone, withdrawn ones with the marker; no raw id as a key
        changelog = latest_per_key(bootstrap, f"{s.app_id}-users-changelog")
        assert all(changelog[codec.dumps(p(u))] is None for u in erased)
        assert all(changelog[codec.dumps(p(u))] == b"\x02" for u in withdrawn)
        assert not {codec.dumps(u) for u in raw_ids} & set(changelog)
        # the trigger service deleted their trigger state
        wait_for(service, lambda m: metric_total(m, "segment_worker_triggers_changes_total|outcome=left") >= 6, 60)
        assert_topic_configs(bootstrap, trigger_topics(s, goals=False))  # a compacted trigger-state topic
        trigger_states = latest_per_key(bootstrap, f"{s.app_id}-triggers-state")
        assert all(trigger_states[p(u).encode()] is None for u in [*erased, *withdrawn])
        assert trigger_states[p(kept).encode()] is not None
    finally:
        service.stop()

    # a restart (from the local copy and the changelog) brings nobody back; later events start a fresh profile
    worker.stop()
    worker = start_worker(s)
    for u in erased:
        assert worker.status(f"/users/{u}") == 404
    send(s, [{"user_id": erased[0], "event_type": "post", "timestamp": t + 5000}])
    wait_for(worker, processed(1), 60)
    fresh = poll_until(lambda: worker.status(f"/users/{erased[0]}"), lambda status: status == 200, 30, "a new profile")
    assert fresh == 200 and worker.get(f"/users/{erased[0]}")["event_count"] == 1
    assert worker.get(f"/users/{withdrawn[0]}")["consent"] == {"segmentation": False}


def _last(chain: list[dict[str, Any]]) -> dict[str, Any]:
    return max(chain, key=lambda c: c["sequence"])
