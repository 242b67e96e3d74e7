"""Alerts on persona events (`when: {persona_event: ...}`): parsing, matching nothing of users, the records."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import yaml

from tests.fakes import model_of
from worker.personas.lifecycle import Window, first_lineage, persona_changes
from worker.triggers import RulesError, TriggerState, parse_rules, plan
from worker.triggers.operators import persona_notifications

SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "persona-notification.v1.json").read_text())
DAY = 86_400_000

RULES = """
campaigns:
  - {name: ops-merges, when: {persona_event: [merged, retired]}, channel: slack}
  - {name: ops-all-new, when: {persona_event: emerged}}
  - {name: to-readers-by-id, when: {from: "*", to: p2}}
  - {name: to-readers-by-name, when: {from: p1, to: readers}}
  - {name: readers-lineage, when: {from: "*", to: {lineage: p2}}}
  - {name: creators, when: {from: "*", to: p1}}
"""


def events() -> list[dict[str, Any]]:
    """v1 (p1 creators, p2 readers) -> v2: p2 merged into p1, p3 emerged."""
    v1 = model_of(1, [[1, 0], [0, 1]], ["p1", "p2"], ["creators", "readers"], as_of_ms=DAY)
    v1 = dataclasses.replace(v1, lineage=first_lineage(v1))
    v2 = model_of(2, [[1, 0], [5, 5]], ["p1", "p3"], ["creators", "sharers"], as_of_ms=2 * DAY)
    rows = [[1.0, 0.0] + [0.0] * (v1.space.dim - 2)] * 4 + [[0.0, 1.0] + [0.0] * (v1.space.dim - 2)]
    changes, _ = persona_changes(v1, v2, Window(np.array(rows), np.zeros(5, dtype=np.int64)), 2.5)
    return list(changes)


def test_a_merge_alerts_the_campaigns_that_ask_for_it_naming_the_rules_it_leaves_without_a_persona() -> None:
    rules = parse_rules(yaml.safe_load(RULES))
    by_kind = {e["kind"]: e for e in events()}
    assert set(by_kind) == {"merged", "emerged"}
    (alert,) = persona_notifications(by_kind["merged"], rules)
    jsonschema.validate(alert, SCHEMA)
    assert (alert["campaign"], alert["channel"], alert["kind"]) == ("ops-merges", "slack", "merged")
    assert alert["persona_event_id"] == by_kind["merged"]["event_id"] and alert["model_version"] == 2
    assert alert["rules_naming_gone"] == [  # p2 (readers) is gone: by id, by name, as a lineage's root
        {"campaign": "to-readers-by-id", "segment": "p2"},
        {"campaign": "to-readers-by-name", "segment": "readers"},
        {"campaign": "readers-lineage", "segment": "lineage of p2"},
    ]
    assert alert["summary"].startswith("model v2: p2 (readers), p1 (creators) merged into p1 (creators)")
    (new,) = persona_notifications(by_kind["emerged"], rules)
    jsonschema.validate(new, SCHEMA)
    assert (new["campaign"], new["channel"], new["rules_naming_gone"]) == ("ops-all-new", "ops", [])
    assert new["notification_id"] != alert["notification_id"]
    assert persona_notifications(by_kind["merged"], rules) == [alert]  # announced again: the same record


def test_persona_event_campaigns_never_notify_users() -> None:
    rules = parse_rules(yaml.safe_load("campaigns:\n  - {name: ops, when: {persona_event: retired}}\n"))
    change = {
        "schema": "segment-change.v1",
        "event_id": "0" * 32,
        "user_id": "u1",
        "from_segment": "p1",
        "to_segment": "dormant",
        "changed_at": "2026-01-02T00:00:00.000Z",
        "model_version": 2,
        "trigger": "silence",
        "sequence": 2,
    }
    assert plan(change, TriggerState(), rules).notifications == []
    assert rules.unknown_personas(["p1"], ["creators"]) == [] and not rules.by_lineage


@pytest.mark.parametrize(
    ("campaign", "problem"),
    [
        ("{name: a, when: {persona_event: vanished}}", "a.when.persona_event: expected one or a list of emerged"),
        ("{name: a, when: {persona_event: []}}", "a.when.persona_event: expected one or a list"),
        ("{name: a, when: {persona_event: retired, to: p1}}", "a.when: 'to' does not go with persona_event"),
        ("{name: a, when: {persona_event: retired}, cooldown: 1d}", "a: 'cooldown' is for campaigns on users'"),
        ("{name: a, when: {persona_event: retired}, holdout: 0.1}", "a: 'holdout' is for campaigns on users'"),
    ],
)
def test_a_persona_event_campaign_takes_only_what_fits_it(campaign: str, problem: str) -> None:
    with pytest.raises(RulesError) as raised:
        parse_rules(yaml.safe_load(f"campaigns:\n  - {campaign}\n"))
    assert problem in str(raised.value)


def test_the_readme_persona_event_example_parses() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## React to segment changes", 1)[1].split("\n## ", 1)[0]
    (block,) = [b for b in section.split("```yaml")[1:] if "persona_event" in b.split("```", 1)[0]]
    (campaign,) = parse_rules(yaml.safe_load(block.split("```", 1)[0])).persona_campaigns
    assert campaign.persona_events == {"retired", "merged"} and campaign.channel == "ops-chat"
