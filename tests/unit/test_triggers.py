from __future__ import annotations

import dataclasses
import json
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from worker.changes.segmenter import change_id
from worker.clustering.snapshot import ancestries
from worker.events.timefmt import format_rfc3339
from worker.triggers import RulesError, TriggerState, load_rules, parse_rules, plan
from worker.triggers.plan import defer
from worker.triggers.rules import CHANGE_TRIGGERS

SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "notification.v1.json").read_text())

EXAMPLE = """
defaults:
  quiet_hours: {start: "22:00", end: "08:00"}
  max_per_user_per_day: 2
campaigns:
  - name: win-back
    when: {from: "*", to: "dormant"}
    channel: push
    cooldown: 7d
    holdout: 0.1
    goal: {event_type: purchase, within: 7d}
"""


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def change(
    user: str,
    seq: int,
    at: int,
    to: str = "dormant",
    before: str | None = "p1",
    tz: str | None = None,
    trigger: str = "event",
) -> dict[str, Any]:
    return {
        "schema": "segment-change.v1",
        "event_id": change_id(user, seq, before, to, 0),
        "user_id": user,
        "from_segment": before,
        "to_segment": to,
        "from_segment_name": {"p1": "readers", "p2": "buyers"}.get(before or ""),
        "to_segment_name": {"p1": "readers", "p2": "buyers"}.get(to, to),
        "changed_at": format_rfc3339(at),
        "model_version": 3,
        "trigger": trigger,
        "sequence": seq,
        "timezone": tz,
        "reasons": [{"feature": "days_since_last_event", "value": 15.0, "direction": "up"}],
    }


def rules(text: str) -> Any:
    return parse_rules(yaml.safe_load(text))


def test_the_documented_example_parses() -> None:
    (c,) = rules(EXAMPLE).campaigns
    assert (c.name, c.from_segment, c.to_segment, c.channel) == ("win-back", "*", "dormant", "push")
    assert c.cooldown_ms == 7 * 86_400_000 and c.holdout == 0.1 and c.max_per_day == 2
    assert c.goal is not None and (c.goal.event_type, c.goal.within_ms) == ("purchase", 7 * 86_400_000)
    assert c.quiet_hours is not None and str(c.quiet_hours.start) == "22:00:00"


def test_every_problem_of_a_rules_file_is_reported_at_once(tmp_path: Path) -> None:
    bad = """
defaults: {quiet_hours: {start: "25:00", end: "08:00"}, max_per_user_per_day: -1, colour: red}
campaigns:
  - {name: a, when: {from: "*", to: dormant}, cooldown: soon, holdout: 1.5}
  - {name: a, when: {to: dormant}, goal: {event_type: purchase}}
"""
    with pytest.raises(RulesError) as err:
        rules(bad)
    text = str(err.value)
    for expected in (
        "defaults.quiet_hours.start: '25:00'",
        "defaults.max_per_user_per_day",
        "unknown key 'colour'",
        "cooldown: 'soon' is not a duration",
        "holdout: expected a share",
        "'a' is used twice",
        "when: expected",
        "goal: expected",
    ):
        assert expected in text, expected
    with pytest.raises(RulesError, match="not valid YAML"):
        (tmp_path / "r.yaml").write_text("campaigns: [\n")
        load_rules(tmp_path / "r.yaml")
    with pytest.raises(RulesError, match="No such file"):
        load_rules(tmp_path / "missing.yaml")


def test_matching_by_id_name_any_and_first_assignment() -> None:
    r = rules("""
campaigns:
  - {name: welcome, when: {from: null, to: "*"}}
  - {name: to-buyers, when: {from: readers, to: p2}}
  - {name: any-move, when: {from: "*", to: "*"}}
""")
    t = ms("2026-06-01T12:00:00+00:00")
    assert [n.campaign for n in plan(change("u", 1, t, to="p1", before=None), TriggerState(), r).notifications] == [
        "welcome",
        "any-move",
    ]
    assert [n.campaign for n in plan(change("u", 2, t, to="p2", before="p1"), TriggerState(), r).notifications] == [
        "to-buyers",
        "any-move",
    ]


def test_moves_a_model_update_made_notify_only_campaigns_that_ask_for_them() -> None:
    r = rules("""
campaigns:
  - {name: to-buyers, when: {from: "*", to: p2}}
  - {name: model-too, when: {from: "*", to: p2, trigger: [event, model_update]}}
  - {name: model-only, when: {from: "*", to: p2, trigger: model_update}}
""")
    t = ms("2026-06-01T12:00:00+00:00")

    def fired(trigger: str) -> list[str]:
        return [n.campaign for n in plan(change("u", 2, t, to="p2", trigger=trigger), TriggerState(), r).notifications]

    assert fired("event") == ["to-buyers", "model-too"]
    assert fired("silence") == ["to-buyers"]
    assert fired("model_update") == ["model-too", "model-only"]
    with pytest.raises(RulesError, match=r"when.trigger: expected one or a list of event, silence, model_update"):
        rules("campaigns: [{name: x, when: {from: '*', to: p2, trigger: [event, typo]}}]")
    schema = json.loads((Path(__file__).parents[2] / "schemas" / "segment-change.v1.json").read_text())
    to_a_segment = set(schema["properties"]["trigger"]["enum"]) - {"erased", "consent_withdrawn"}
    assert set(CHANGE_TRIGGERS) == to_a_segment


@pytest.mark.parametrize(
    ("local", "zone", "expected_send", "deferred"),
    [
        ("2026-06-01T12:00:00+02:00", "Europe/Berlin", "2026-06-01T12:00:00+02:00", False),
        ("2026-06-01T23:30:00+02:00", "Europe/Berlin", "2026-06-02T08:00:00+02:00", True),
        ("2026-06-01T07:00:00+02:00", "Europe/Berlin", "2026-06-01T08:00:00+02:00", True),
        ("2026-06-01T23:30:00+09:00", "Asia/Tokyo", "2026-06-02T08:00:00+09:00", True),
        ("2026-06-01T23:30:00+00:00", None, "2026-06-02T08:00:00+00:00", True),  # unknown zone: UTC
        ("2026-06-01T23:30:00+00:00", "Not/AZone", "2026-06-02T08:00:00+00:00", True),
        # DST ends in Berlin on 2026-10-25 (03:00 CEST -> 02:00 CET): 08:00 local is then UTC+1
        ("2026-10-24T23:00:00+02:00", "Europe/Berlin", "2026-10-25T08:00:00+01:00", True),
        # DST starts on 2026-03-29 (02:00 CET -> 03:00 CEST): 08:00 local is then UTC+2
        ("2026-03-28T22:30:00+01:00", "Europe/Berlin", "2026-03-29T08:00:00+02:00", True),
        # America/New_York, DST starts 2026-03-08
        ("2026-03-07T23:00:00-05:00", "America/New_York", "2026-03-08T08:00:00-04:00", True),
    ],
)
def test_quiet_hours_defer_to_their_end_in_local_time(
    local: str, zone: str | None, expected_send: str, deferred: bool
) -> None:
    r = rules(EXAMPLE)
    (n,) = plan(change("u", 1, ms(local), tz=zone), TriggerState(), r).notifications
    assert (n.send_at, n.deferred) == (ms(expected_send), deferred)
    jsonschema.validate(n.to_record(), SCHEMA)
    assert n.to_record()["timezone"] == (zone if zone in ("Europe/Berlin", "Asia/Tokyo", "America/New_York") else "UTC")


def test_a_quiet_hours_end_that_dst_skips_maps_to_the_instant_after_the_change() -> None:
    r = rules('campaigns: [{name: c, when: {from: "*", to: "*"}, quiet_hours: {start: "01:00", end: "02:30"}}]')
    quiet = r.campaigns[0].quiet_hours
    t = ms("2026-03-29T01:30:00+01:00")  # Berlin: 02:30 does not exist that night
    send, deferred = defer(t, "Europe/Berlin", quiet)
    assert deferred and send == ms("2026-03-29T03:30:00+02:00") and send > t


def test_daily_cap_counts_the_users_local_day_over_all_campaigns() -> None:
    r = rules("""
defaults: {max_per_user_per_day: 2}
campaigns:
  - {name: a, when: {from: "*", to: "*"}}
  - {name: b, when: {from: "*", to: "*"}}
""")
    # 23:00 and 01:00 UTC are two UTC days but one Tokyo day (08:00 and 10:00)
    state = TriggerState()
    first = plan(change("u", 1, ms("2026-06-01T23:00:00+00:00"), tz="Asia/Tokyo"), state, r)
    second = plan(change("u", 2, ms("2026-06-02T01:00:00+00:00"), tz="Asia/Tokyo"), state, r)
    assert [n.campaign for n in first.notifications] == ["a", "b"]
    assert second.notifications == [] and second.skipped == [("a", "daily_cap"), ("b", "daily_cap")]
    utc = TriggerState()
    plan(change("v", 1, ms("2026-06-01T23:00:00+00:00")), utc, r)
    assert len(plan(change("v", 2, ms("2026-06-02T01:00:00+00:00")), utc, r).notifications) == 2
    # the next Tokyo day is a fresh day; old days are forgotten
    third = plan(change("u", 3, ms("2026-06-02T16:00:00+00:00"), tz="Asia/Tokyo"), state, r)
    assert len(third.notifications) == 2
    plan(change("u", 4, ms("2026-06-09T16:00:00+00:00"), tz="Asia/Tokyo"), state, r)
    assert sorted(state.day_counts) == ["2026-06-10"]


def test_cooldown_per_user_and_campaign_and_state_round_trip() -> None:
    r = rules('campaigns: [{name: c, when: {from: "*", to: "*"}, cooldown: 7d}]')
    state = TriggerState()
    t0 = ms("2026-06-01T12:00:00+00:00")
    assert len(plan(change("u", 1, t0), state, r).notifications) == 1
    assert plan(change("u", 2, t0 + 6 * 86_400_000), state, r).skipped == [("c", "cooldown")]
    state = TriggerState.from_fields(json.loads(json.dumps(state.to_fields())))  # as the changelog keeps it
    assert len(plan(change("u", 3, t0 + 7 * 86_400_000), state, r).notifications) == 1
    assert len(plan(change("w", 1, t0 + 86_400_000), TriggerState(), r).notifications) == 1  # another user


def test_redelivered_changes_never_notify_twice() -> None:
    r = rules(EXAMPLE)
    state = TriggerState()
    c = change("u", 1, ms("2026-06-01T12:00:00+00:00"))
    (n,) = plan(c, state, r).notifications
    again = plan(c, state, r)
    assert again.duplicate and again.notifications == []
    assert plan(change("u", 1, ms("2026-06-01T12:00:00+00:00")), TriggerState(), r).notifications[0] == n  # same id


def test_holdout_is_deterministic_and_close_to_its_share() -> None:
    r = rules(EXAMPLE)
    t = ms("2026-06-01T12:00:00+00:00")
    first = Counter(plan(change(f"user-{i}", 1, t), TriggerState(), r).notifications[0].holdout for i in range(10_000))
    again = Counter(plan(change(f"user-{i}", 1, t), TriggerState(), r).notifications[0].holdout for i in range(10_000))
    assert first == again
    assert 0.09 <= first[True] / 10_000 <= 0.11
    assert all(
        not plan(change(f"user-{i}", 1, t), TriggerState(), rules('campaigns: [{name: c, when: {from: "*", to: "*"}}]'))
        .notifications[0]
        .holdout
        for i in range(200)
    )


def test_the_readme_rules_example_is_the_documented_one_and_parses() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## React to segment changes", 1)[1]
    block = section.split("```yaml", 1)[1].split("```", 1)[0]
    assert rules(block) == rules(EXAMPLE)


def test_rules_naming_no_persona_of_the_model_are_found() -> None:
    rules = parse_rules(
        yaml.safe_load(
            """
campaigns:
  - {name: by-id, when: {from: "*", to: p1}}
  - {name: by-name, when: {from: readers, to: dormant}}
  - {name: retired, when: {from: p3, to: p7}}
  - {name: first, when: {from: null, to: new}}
"""
        )
    )
    unknown = rules.unknown_personas(("p1", "p2"), ("creators", "readers"))
    assert unknown == [("retired", "p3"), ("retired", "p7")]  # ids, names, reserved segments, "*", null: known


def test_a_rule_by_lineage_follows_a_persona_into_what_split_off_or_merged_into_it() -> None:
    r = rules("""
campaigns:
  - {name: family, when: {from: "*", to: {lineage: p3}}}
  - {name: left-family, when: {from: {lineage: p3}, to: dormant}}
  - {name: gone, when: {from: "*", to: {lineage: p9}}}
""")
    assert r.by_lineage and not rules(EXAMPLE).by_lineage
    t = ms("2026-06-01T12:00:00+00:00")
    # p7 split off from p3, then p3 and p4 merged into p4; p2 is unrelated
    ancestry = {"p7": ("p3",), "p4": ("p3",)}

    def fired(before: str, to: str) -> list[str]:
        notes = plan(change("u", 2, t, to=to, before=before), TriggerState(), r, ancestry).notifications
        return [n.campaign for n in notes]

    assert fired("p2", "p3") == fired("p2", "p7") == fired("p2", "p4") == ["family"]
    assert fired("p1", "p2") == []
    assert fired("p7", "dormant") == ["left-family"] and fired("p2", "dormant") == []
    assert [n.campaign for n in plan(change("u", 2, t, to="p7"), TriggerState(), r).notifications] == []  # unknown
    assert r.unknown_personas(("p2", "p4", "p7"), (), ancestry) == [("gone", "lineage of p9")]
    with pytest.raises(RulesError, match=r"when.to: expected a persona id or name, '\*', or \{lineage: <persona id>\}"):
        rules("campaigns: [{name: x, when: {from: '*', to: {lineage: 3}}}]")


def test_ancestry_follows_splits_and_merges_and_keeps_live_ids_only() -> None:
    split = {"kind": "split", "from": [{"id": "p3"}], "to": [{"id": "p3"}, {"id": "p7"}]}
    merge = {"kind": "merged", "from": [{"id": "p3"}, {"id": "p4"}], "to": [{"id": "p4"}]}
    after_split = ancestries({}, (split,), ("p1", "p3", "p4", "p7"))
    assert after_split == {"p7": ("p3",)}
    after_merge = ancestries(after_split, (merge,), ("p1", "p4", "p7"))
    assert after_merge == {"p4": ("p3",), "p7": ("p3",)}
    split_again = {"kind": "split", "from": [{"id": "p7"}], "to": [{"id": "p7"}, {"id": "p8"}]}
    assert ancestries(after_merge, (split_again,), ("p4", "p7", "p8"))["p8"] == ("p3", "p7")


def test_a_failed_persona_check_never_stops_the_service() -> None:
    """The trigger service's look at the current model is advice: a broker that cannot be asked is logged."""
    import asyncio

    from worker.settings import Settings
    from worker.triggers.personas import PersonaCheck

    class Unreachable:
        async def ends(self, *_: Any, **__: Any) -> dict[int, int]:
            raise ConnectionError("broker away")

    class Known(PersonaCheck):
        def _exists(self) -> bool:  # the changelog is there; reading it fails
            return True

    rules = parse_rules(yaml.safe_load('campaigns: [{name: a, when: {from: "*", to: p1}}]'))
    check = Known(Settings(), rules, Unreachable())  # type: ignore[arg-type]
    asyncio.run(check.due())  # logged, not raised
    assert check.unknown == [] and check.version == 0


def test_a_change_naming_a_newer_model_makes_the_service_read_the_model_at_once() -> None:
    """Rules by lineage must know a persona that just split off: the model is read again before the change is
    planned, not at the next minute's look."""
    import asyncio

    from tests.fakes import model_of
    from worker.settings import Settings
    from worker.triggers.personas import PersonaCheck

    models = [dataclasses.replace(model_of(4, [[0, 0], [1, 1]], ["p3", "p7"]), ancestry={"p7": ("p3",)})]

    class Current(PersonaCheck):
        async def _current(self) -> Any:
            return models[0]

    check = Current(Settings(), rules("campaigns: [{name: a, when: {from: '*', to: {lineage: p3}}}]"), None)  # type: ignore[arg-type]

    async def run() -> None:
        await check.due()
        assert (check.version, check.ancestry) == (4, {"p7": ("p3",)})
        models[0] = dataclasses.replace(models[0], version=5, ancestry={"p7": ("p3",), "p8": ("p3", "p7")})
        await check.due()  # within the minute: not read again
        assert check.version == 4
        await check.at_least(4)
        assert check.version == 4
        await check.at_least(5)
        assert check.version == 5 and check.ancestry["p8"] == ("p3", "p7")

    asyncio.run(run())
