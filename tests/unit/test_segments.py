from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.unit.builders import T0, record_factory, step, two_persona_model
from worker import codec
from worker.changes import Segmenter
from worker.events.timefmt import format_rfc3339
from worker.features import UserState
from worker.segments.rules import SegmentRulesError, compile_condition, load_segment_rules, parse_segment_rules
from worker.settings import Settings

HL = Settings().half_lives_ms
SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "segment-membership.v1.json").read_text())
HOUR = 3_600_000


@pytest.mark.parametrize(
    ("condition", "features", "expected"),
    [
        ("spend_7d >= 100", {"spend_7d": 100.0}, True),
        ("spend_7d >= 100", {}, False),  # a feature the user does not have counts 0
        ("days_since_last_event > 14 and event_count >= 5", {"days_since_last_event": 15, "event_count": 5}, True),
        ("not (count_7d_purchase > 0) or daypart_night > 0.5", {"count_7d_purchase": 1.0, "daypart_night": 0.2}, False),
        ("0 < weekend_share <= 0.5", {"weekend_share": 0.5}, True),
        ("event_count != -1", {}, True),
    ],
)
def test_conditions_evaluate_comparisons_and_logic(condition: str, features: dict[str, float], expected: bool) -> None:
    check, _ = compile_condition(condition, HL)
    assert check(features) is expected


@pytest.mark.parametrize(
    "condition",
    [
        "__import__('os').system('true')",
        "spend_7d.real > 1",
        "abs(spend_7d) > 1",
        "spend_7d + 1 > 2",
        "spend_30d > 1",  # no such half-life
        "lifetime_value > 1",
        "spend_7d",
        "spend_7d > 'x'",
        "spend_7d in (1, 2)",
        "spend_7d >",
    ],
)
def test_anything_but_comparisons_of_features_and_numbers_is_refused(condition: str) -> None:
    with pytest.raises(SegmentRulesError):
        compile_condition(condition, HL)


def test_a_rules_file_reports_every_problem_and_loads(tmp_path: Path) -> None:
    with pytest.raises(SegmentRulesError) as err:
        parse_segment_rules({"segments": {"ok": "event_count > 1", "bad one": "x > 1", "worse": "nope > 1"}}, HL)
    assert "'bad one'" in str(err.value) and "worse" in str(err.value) and "ok:" not in str(err.value)
    path = tmp_path / "segments.yaml"
    path.write_text(yaml.safe_dump({"segments": {"loyal": "event_count >= 3"}}))
    (rule,) = load_segment_rules(path, HL)
    assert (rule.name, rule.names) == ("loyal", ("event_count",))


def test_members_enter_and_exit_exactly_when_the_condition_flips_beside_the_persona_chain() -> None:
    s = Settings(min_events=3, confirmations=1, min_margin=0.0, dormant_after_days=5)
    rules = parse_segment_rules(
        {"segments": {"regular": "event_count >= 3", "browser": "count_7d_view > 2 and not count_7d_purchase > 0"}},
        s.half_lives_ms,
    )
    store: dict[str, UserState] = {}
    seg = Segmenter(s, store, lambda _u: 0, segment_rules=rules)
    seg.set_model(two_persona_model(s))
    rec = record_factory()
    memberships, changes = [], []
    times = [T0 + i * HOUR for i in range(6)]
    for i, t in enumerate(times):
        res = step(seg, [rec("u", "purchase" if i == 4 else "view", t, 50.0 if i == 4 else None)])
        memberships += [codec.loads(m) for *_, m in res.memberships]
        changes += [codec.loads(c) for _, c, _ in res.changes]
    res = step(seg, [rec("w", "view", T0 + 10 * 86_400_000)])  # u goes dormant; its memberships re-evaluated too
    memberships += [codec.loads(m) for uid, *_, m in res.memberships if uid == "u"]
    changes += [codec.loads(c) for _, c, _ in res.changes]
    for m in memberships:
        jsonschema.validate(m, SCHEMA)
    assert [(m["segment"], m["action"], m["at"]) for m in memberships] == [
        ("browser", "entered", format_rfc3339(times[2])),  # third view
        ("regular", "entered", format_rfc3339(times[2])),  # third event
        ("browser", "exited", format_rfc3339(times[4])),  # the purchase
    ]
    assert [m["sequence"] for m in memberships] == [1, 2, 3]
    assert set(memberships[2]["features"]) == {"count_7d_view", "count_7d_purchase"}
    assert memberships[2]["features"]["count_7d_purchase"] == pytest.approx(1.0, abs=0.01)
    # the persona chain is its own: sequences 1.. without gaps, untouched by the memberships
    assert [c["sequence"] for c in changes if c["user_id"] == "u"] == list(range(1, store["u"].seq + 1))
    assert store["u"].rule_segments == ["regular"] and store["u"].rule_seq == 3
