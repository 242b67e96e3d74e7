"""The worker process against the real (embedded) broker: events in → changes out, dead letters, the HTTP API,
routing by user_id whatever the key, and a restart that keeps counts and persona ids."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import jsonschema
import pytest

from tests.helpers import BAD, CHANGE_SCHEMA, EVENT_SCHEMA, delivered, processed, read_chains, send, wait_for
from worker import codec
from worker.kafkaio import produce, read_all
from worker.process import metric_total
from worker.routing import partitioner
from worker.settings import Settings
from worker.synth import generate

pytestmark = pytest.mark.integration


def off_partition(s: Settings, events: list[dict[str, Any]]) -> int:
    """Records of ``events`` in the input topic that sit on another partition than their user's: what the worker
    must forward (records that are not events go to the dead-letter topic where they are read)."""
    owner = partitioner(s.partitions)
    users = {codec.dumps(e): e["user_id"] for e in events}
    return sum(
        1
        for r in read_all(s.bootstrap_servers, s.input_topic)
        if r.value in users and r.partition != owner(users[r.value])
    )


def test_events_in_changes_out_dead_letters_api_and_restart(worker_settings: Settings, start_worker: Any) -> None:
    s = worker_settings
    bootstrap = s.bootstrap_servers
    pop = generate(250, 21, seed=3)
    for e in pop.events[:50]:
        jsonschema.validate(e, EVENT_SCHEMA)
    cut = int(len(pop.events) * 0.7)
    first, rest = pop.events[:cut], pop.events[cut:]
    # a share of records keyed wrongly or not at all: the worker must route by user_id
    send(s, first, wrong_key_every=17)
    produce(bootstrap, s.input_topic, [(b"bad", raw) for raw in BAD])
    worker = start_worker(s)

    wait_for(worker, lambda m: processed(len(first))(m) and m.get("segment_worker_model_version", 0) >= 1)
    send(s, rest, wrong_key_every=17)
    m = wait_for(worker, processed(len(pop.events)))
    assert metric_total(m, "segment_worker_events_processed_total") == len(pop.events)
    # forwarded: exactly the valid records that landed off their user's partition (wrong key, no key)
    assert metric_total(m, "segment_worker_events_forwarded_total") == off_partition(s, pop.events)
    assert metric_total(m, "segment_worker_events_duplicate_total") == 0
    # every record came in whole fetches (worker.runtime.handoff), none through Faust's per-message streams
    assert m["segment_worker_records_streamed_total|stream=input"] == 0
    assert m["segment_worker_records_streamed_total|stream=by_user"] == 0
    for name in (
        "segment_worker_segment_changes_total",
        "segment_worker_persona_users",
        "segment_worker_event_to_change_seconds_count",
        "process_resident_memory_bytes",
    ):
        assert any(k.startswith(name) for k in m), name

    # dead letters: exactly one per bad record, original bytes, reason and source coordinates in headers
    m = wait_for(worker, delivered(s.dlq_topic, len(BAD)))
    dead = read_all(bootstrap, s.dlq_topic)
    assert sorted((r.value or b"") for r in dead) == sorted(BAD)
    for r in dead:
        assert r.headers["dlq.reason"].decode() == BAD[r.value or b""]
        assert r.headers["dlq.source.topic"].decode() == s.input_topic
        assert int(r.headers["dlq.source.offset"]) >= 0
    by_reason = {k.split("reason=")[1]: v for k, v in m.items() if "dead_lettered_total|" in k}
    assert by_reason == dict.fromkeys(BAD.values(), 1.0)

    # changes: schema-valid, one content per id, chained per user (every event's outputs are delivered: above)
    chains = read_chains(bootstrap, s.output_topic, CHANGE_SCHEMA)
    assert chains
    for chain in chains.values():
        chain.sort(key=lambda c: c["sequence"])
        assert [c["sequence"] for c in chain] == list(range(1, len(chain) + 1))
        assert chain[0]["from_segment"] is None
        for a, b in itertools.pairwise(chain):
            assert b["from_segment"] == a["to_segment"]

    # the API: exact counts for every user, personas, 404 for strangers
    counts = Counter(e["user_id"] for e in pop.events)
    before = {}
    for uid, n in counts.items():
        u = worker.get(f"/users/{uid}")
        assert u["event_count"] == n, uid
        assert u["segment"] == (chains[uid][-1]["to_segment"] if uid in chains else None)
        # the recent history: the chain's newest changes, newest first, with their strongest reasons
        recent = [
            {
                "sequence": c["sequence"],
                "from_segment": c["from_segment"],
                "to_segment": c["to_segment"],
                "changed_at": c["changed_at"],
                "trigger": c["trigger"],
                "reasons": [{"feature": r["feature"], "direction": r["direction"]} for r in c["reasons"][:2]],
            }
            for c in reversed(chains.get(uid, [])[-s.user_history :])
        ]
        fields = ("sequence", "from_segment", "to_segment", "changed_at", "trigger", "reasons")
        assert [{k: r[k] for k in fields} for r in u["recent_changes"]] == recent, uid
        before[uid] = u["segment"]
    assert all(before.values()), [u for u, v in before.items() if not v]
    assert worker.status("/users/nobody-at-all") == 404
    personas = worker.get("/personas")
    # a persona's size is the number of users the API places in it (one worker owns every partition)
    sizes = {p["id"]: p["size"] for p in personas["personas"] if p["size"]}
    assert sizes == Counter(before.values())
    assert personas["model_version"] >= 1
    assert {"id", "name", "size", "since", "profile"} <= set(personas["personas"][0])
    history = worker.get("/personas/history")  # the kept versions, the one in use among them
    assert personas["model_version"] in [v["version"] for v in history["versions"]]
    assert {p["id"] for p in personas["personas"] if p["id"].startswith("p")} <= set(history["personas"])
    assert worker.get("/healthz")["status"] == "ok"

    # restart: state and persona ids survive, counts stay exact, nothing is counted twice
    worker.stop()
    # no table per partition assignment of the reads beside the group (worker.cli.run.QUIET_LOGGERS)
    assert "Updating subscribed topics" not in worker.log_path.read_text()
    worker = start_worker(s)
    uid = next(iter(counts))
    last_ts = max(e["timestamp"] for e in pop.events if isinstance(e["timestamp"], int))
    more = [{"user_id": uid, "event_type": "view", "timestamp": last_ts + i} for i in range(1, 6)]
    send(s, more)
    wait_for(worker, lambda m: worker.get(f"/users/{uid}")["event_count"] == counts[uid] + 5)
    for other, n in counts.items():
        u = worker.get(f"/users/{other}")
        assert u["event_count"] == n + (5 if other == uid else 0)
        if other != uid:
            assert u["segment"] == before[other]
    assert worker.get("/personas")["model_version"] >= personas["model_version"]
