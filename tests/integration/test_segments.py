"""Custom segments in the worker against the real broker: membership events on their own topic, entered exactly at
the event that makes the condition true, one chain per user beside the persona changes, and /users/{id} agrees."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import processed, read_chains, send, wait_for
from worker.events.timefmt import format_rfc3339
from worker.settings import Settings
from worker.synth import generate

pytestmark = pytest.mark.integration

SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "segment-membership.v1.json").read_text())


def test_memberships_enter_at_the_flipping_event_and_match_the_api(
    worker_settings: Settings, start_worker: Any, tmp_path: Path
) -> None:
    rules = tmp_path / "segments.yaml"
    rules.write_text(yaml.safe_dump({"segments": {"regular": "event_count >= 5", "spender": "monetary_total >= 50"}}))
    s = worker_settings.replace(segment_rules=str(rules), membership_topic=f"{worker_settings.app_id}-memberships")
    pop = generate(120, 14, seed=6)
    events = [e for e in pop.events if isinstance(e["timestamp"], int)]
    send(s, events)
    worker = start_worker(s)
    wait_for(worker, processed(len(events)))
    # where each condition first holds, in each user's event order (both are monotone: entered once, never left)
    expected: dict[tuple[str, str], str] = {}
    count: dict[str, int] = defaultdict(int)
    money: dict[str, float] = defaultdict(float)
    newest: dict[str, int] = defaultdict(int)
    for e in events:
        u = e["user_id"]
        count[u] += 1
        money[u] += float(e.get("value") or 0.0)
        newest[u] = max(newest[u], e["timestamp"])
        if count[u] == 5:
            expected[(u, "regular")] = format_rfc3339(newest[u])
        if money[u] >= 50 and (u, "spender") not in expected:
            expected[(u, "spender")] = format_rfc3339(newest[u])
    assert expected
    chains = read_chains(s.bootstrap_servers, s.membership_topic, SCHEMA)
    got = {}
    for u, chain in chains.items():
        unique = sorted({c["sequence"]: c for c in chain}.values(), key=lambda c: c["sequence"])
        assert [c["sequence"] for c in unique] == list(range(1, len(unique) + 1))
        assert all(c["action"] == "entered" for c in unique)
        got.update({(u, c["segment"]): c["at"] for c in unique})
    assert got == expected
    for u in count:  # every user: 120 requests, well under a second
        doc = worker.get(f"/users/{u}")
        assert doc["rule_segments"] == sorted(seg for (user, seg) in expected if user == u)
