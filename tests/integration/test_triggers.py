"""``segment-worker triggers`` against the real broker: its notifications equal what the pure planner gives for the
same changes (quiet hours across time zones, daily caps, cooldowns, holdouts), re-delivered changes notify nobody,
and caps and cooldowns hold across a SIGKILL and restart."""

from __future__ import annotations

import http.server
import json
import random
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.fakes import model_of
from tests.helpers import poll_until, send_changes, service_setup, serving_metrics, start_service, wait_for_records
from tests.unit.test_operators import events as persona_events
from worker import codec
from worker.broker import free_port
from worker.changes.segmenter import change_id
from worker.events.timefmt import format_rfc3339
from worker.kafkaio import create_topics, produce, read_all
from worker.personas.lifecycle import event_key
from worker.process import WorkerProcess, metric_total
from worker.runtime.modelpin import MODEL_KEY, changelog_key
from worker.settings import Settings
from worker.topics import MODELS_TABLE, KafkaTopicAdmin, changelog
from worker.triggers import Plan, TriggerState, parse_rules, plan

pytestmark = pytest.mark.integration

SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "notification.v1.json").read_text())
PERSONA_SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "persona-notification.v1.json").read_text())
RULES = """
defaults:
  quiet_hours: {start: "22:00", end: "08:00"}
  max_per_user_per_day: 2
campaigns:
  - name: welcome
    when: {from: null, to: "*"}
    channel: email
    quiet_hours: null
  - name: win-back
    when: {from: "*", to: dormant}
    cooldown: 7d
    holdout: 0.3
  - name: to-buyers
    when: {from: "*", to: buyers}
    cooldown: 1d
    holdout: 0.2
"""
ZONES = ["Europe/Berlin", "Asia/Tokyo", "America/New_York", None]
HOUR = 3_600_000


def changes_of(users: int, seed: int) -> list[dict[str, Any]]:
    """Per user a chain of changes at random hours (nights included), in event-time order per user."""
    rng = random.Random(seed)
    out = []
    t0 = 1_774_000_000_000  # 2026-03-20, across the March DST changes
    for u in range(users):
        uid = f"user-{u:04d}"
        zone = ZONES[u % len(ZONES)]
        t, before = t0 + rng.randint(0, 48) * HOUR, None
        for seq in range(1, rng.randint(2, 7)):
            after = rng.choice([s for s in ("p1", "buyers", "dormant") if s != before])
            out.append(
                {
                    "schema": "segment-change.v1",
                    "event_id": change_id(uid, seq, before, after, t0),
                    "user_id": uid,
                    "from_segment": before,
                    "to_segment": after,
                    "from_segment_name": before,
                    "to_segment_name": after,
                    "changed_at": format_rfc3339(t),
                    "model_version": 2,
                    "sequence": seq,
                    "timezone": zone,
                    "reasons": [{"feature": "rate_7d:view", "value": 1.5, "direction": "up"}],
                }
            )
            t += rng.choice([1, 3, 7, 20, 30, 100, 200]) * HOUR
            before = after
    return out


def planned(changes: list[dict[str, Any]]) -> list[Plan]:
    """The pure planner over the changes in order, one state per user: what the service must produce."""
    rules, states = parse_rules(yaml.safe_load(RULES)), {}
    return [plan(c, states.setdefault(c["user_id"], TriggerState()), rules) for c in changes]


def expected(changes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {n.notification_id: n.to_record() for p in planned(changes) for n in p.notifications}


def expected_skips(changes: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [skip for p in planned(changes) for skip in p.skipped]


def notifications(service: WorkerProcess, s: Settings, written: int, timeout: float = 90.0) -> list[dict[str, Any]]:
    """The notification records, once the running service says it has written ``written`` (its counter; polled
    instead of the topic: each read of the topic is a new client)."""
    poll_until(
        lambda: serving_metrics(service),
        lambda m: metric_total(m, "segment_worker_triggers_notifications_total") >= written,
        timeout,
        f"{written} notifications written",
    )
    return [codec.loads(r.value) for r in read_all(s.bootstrap_servers, s.notifications_topic)]


def test_notifications_match_the_plan_and_survive_redelivery_and_a_restart(
    worker_settings: Settings, tmp_path: Path
) -> None:
    s, rules_file = service_setup(worker_settings, tmp_path, RULES)
    changes = changes_of(300, seed=4)
    first, second = changes[: len(changes) // 2], changes[len(changes) // 2 :]
    want_first = expected(first)
    send_changes(s, first + first[:40])  # the first 40 delivered twice
    bad = [b"{not json", b'{"user_id": "u-bad"}', b"[1, 2]"]
    produce(s.bootstrap_servers, s.output_topic, [(b"u-bad", raw) for raw in bad])  # dead-lettered, no crash
    log = tmp_path / "triggers.log"
    service = start_service(s, rules_file, log)
    try:
        got = notifications(service, s, len(want_first))
        assert {n["notification_id"] for n in got} == set(want_first), log.read_text()[-2000:]
        m = service.metrics()
        assert m["segment_worker_triggers_changes_total|outcome=duplicate"] == 40
        service.kill()  # caps, cooldowns and the handled sequences come back from the state topic
        send_changes(s, first[-40:] + second)  # re-delivered across the restart, then new ones
        service = start_service(s, rules_file, log)
        want = expected(changes)
        got = notifications(
            service, s, len(want) - len(want_first)
        )  # at least the new ones, from the restarted service
        dead = read_all(s.bootstrap_servers, f"{s.notifications_topic}-dlq")
    finally:
        service.stop()
    assert {r.value or b"" for r in dead} == set(bad)  # at least once (twice if the kill came before their commit)
    assert {r.headers["dlq.reason"] for r in dead} == {b"invalid_change"}
    by_id: dict[str, bytes] = {}
    for n in got:
        jsonschema.validate(n, SCHEMA)
        assert by_id.setdefault(n["notification_id"], codec.dumps(n)) == codec.dumps(n), "one content per id"
    extra, missing = set(by_id) - set(want), set(want) - set(by_id)
    users = {codec.loads(by_id[i])["user_id"] for i in extra} | {want[i]["user_id"] for i in missing}
    assert not extra and not missing, "notifications differ from the plan of the changes:\n" + "\n".join(
        f"  {'extra' if i in extra else 'missing' if i in missing else 'both'}: {n['user_id']} {n['campaign']} "
        f"changed {n['changed_at']} send {n['send_at']}"
        for i, n in sorted(
            ({**{i: codec.loads(b) for i, b in by_id.items()}, **want}).items(), key=lambda kv: kv[1]["changed_at"]
        )
        if n["user_id"] in users
    )
    assert {i: codec.loads(b) for i, b in by_id.items()} == want
    # the rules were exercised: deferrals in several zones, both groups, caps or cooldowns that held
    assert {n["timezone"] for n in want.values() if n["deferred"]} >= {"Europe/Berlin", "Asia/Tokyo", "UTC"}
    assert {n["holdout"] for n in want.values()} == {True, False}
    skipped = {reason for _, reason in expected_skips(changes)}
    assert skipped == {"daily_cap", "cooldown"}


class Receiver(http.server.BaseHTTPRequestHandler):
    """A webhook receiver that fails on purpose: every first attempt answers 503, users ending in 7 always 500."""

    attempts: Counter[str] = Counter()
    taken: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = codec.loads(self.rfile.read(int(self.headers["Content-Length"])))
        key = self.headers["Idempotency-Key"]
        with self.lock:
            self.attempts[key] += 1
            first = self.attempts[key] == 1
            if not first and not body["user_id"].endswith("7"):
                self.taken[key] = body
        self.send_response(503 if first else 500 if body["user_id"].endswith("7") else 204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_webhook_sink_retries_and_dead_letters_what_it_cannot_deliver(
    worker_settings: Settings, tmp_path: Path
) -> None:
    Receiver.attempts.clear()
    Receiver.taken.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    s, rules_file = service_setup(
        worker_settings,
        tmp_path,
        RULES,
        webhook_url=f"http://127.0.0.1:{server.server_address[1]}/hook",
        webhook_max_attempts=3,
        webhook_backoff=0.05,
    )
    changes = changes_of(60, seed=8)
    want = expected(changes)
    treated = {i: n for i, n in want.items() if not n["holdout"]}
    failing = {i for i, n in treated.items() if n["user_id"].endswith("7")}
    assert failing and len(failing) < len(treated)
    send_changes(s, changes)
    service = start_service(s, rules_file, tmp_path / "triggers.log")
    try:
        notifications(service, s, len(want))
        poll_until(lambda: len(Receiver.taken), lambda n: n >= len(treated) - len(failing), 60, "webhook posts taken")
        dead = wait_for_records(
            s.bootstrap_servers, f"{s.notifications_topic}-dlq", lambda rs: len(rs) >= len(failing), 60, "dead letters"
        )
    finally:
        service.stop()
        server.shutdown()
        server.server_close()
    assert set(Receiver.taken) == set(treated) - failing  # every treated notification taken, holdouts never posted
    assert Receiver.taken == {i: treated[i] for i in Receiver.taken}  # the notification records themselves
    assert all(Receiver.attempts[i] == 2 for i in Receiver.taken)  # one 503, one retry taken
    assert {codec.loads(r.value)["notification_id"] for r in dead} == failing
    for r in dead:
        assert r.headers["webhook.attempts"] == b"3" and r.headers["webhook.error"] == b"HTTP 500"


EFFECT_RULES = """
campaigns:
  - name: win-back
    when: {from: "*", to: dormant}
    holdout: 0.5
    goal: {event_type: purchase, within: 7d}
"""


def test_campaign_effectiveness_finds_the_uplift_of_a_world_where_treated_users_convert_more(
    worker_settings: Settings, tmp_path: Path
) -> None:
    s, rules_file = service_setup(worker_settings, tmp_path, EFFECT_RULES)
    rules = parse_rules(yaml.safe_load(EFFECT_RULES))
    rng = random.Random(3)
    t0 = 1_780_000_000_000
    changes, events, truth = [], [], Counter()
    for u in range(600):
        uid = f"user-{u:04d}"
        t = t0 + rng.randint(0, 72) * HOUR
        change = {
            "schema": "segment-change.v1",
            "event_id": change_id(uid, 2, "p1", "dormant", t0),
            "user_id": uid,
            "from_segment": "p1",
            "to_segment": "dormant",
            "changed_at": format_rfc3339(t),
            "model_version": 1,
            "sequence": 2,
        }
        changes.append(change)
        (n,) = plan(change, TriggerState(), rules).notifications
        group = "holdout" if n.holdout else "treated"
        truth[(group, "users")] += 1
        if rng.random() < (0.2 if n.holdout else 0.6):  # the treatment works
            when = n.send_at + rng.randint(0, 7 * 24 - 1) * HOUR
            truth[(group, "conversions")] += 1
        else:
            when = n.send_at + rng.choice([-2, 8 * 24]) * HOUR  # a purchase outside the window
        events.append({"user_id": uid, "event_type": "purchase", "timestamp": when, "value": 9.5})
        events.append({"user_id": uid, "event_type": "view", "timestamp": when + 1})
    # half the purchases are on the input topic before the changes that expose their users
    produce(s.bootstrap_servers, s.input_topic, [(e["user_id"].encode(), codec.dumps(e)) for e in events[:600]])
    send_changes(s, changes)
    produce(s.bootstrap_servers, s.input_topic, [(e["user_id"].encode(), codec.dumps(e)) for e in events[600:]])
    service = start_service(s, rules_file, tmp_path / "triggers.log")
    try:
        poll_until(  # every purchase and change read
            lambda: serving_metrics(service),
            lambda m: (
                m.get("segment_worker_triggers_goal_events_total", 0) >= 600
                and m.get("segment_worker_triggers_changes_total|outcome=applied", 0) >= 600
            ),
            90,
            "600 purchases and 600 changes read",
        )
        (row,) = service.get("/campaigns")["campaigns"]
    finally:
        service.stop()
    assert (row["campaign"], row["persona"]) == ("win-back", "dormant")
    for group in ("treated", "holdout"):
        assert row[group]["users"] == truth[(group, "users")]
        assert row[group]["conversions"] == truth[(group, "conversions")]
    assert row["uplift"] == pytest.approx(
        truth[("treated", "conversions")] / truth[("treated", "users")]
        - truth[("holdout", "conversions")] / truth[("holdout", "users")]
    )
    low, high = row["uplift_ci95"]
    assert 0 < low < 0.4 < high  # significant, and covers the world's true uplift


NAMING_RULES = """
campaigns:
  - {name: by-id, when: {from: "*", to: p1}}
  - {name: by-name, when: {from: "*", to: readers}}
  - {name: stale, when: {from: p9, to: p7}}
"""


def test_rules_naming_a_persona_the_model_lacks_are_warned_and_counted(
    worker_settings: Settings, tmp_path: Path
) -> None:
    """Before any model (the worker never ran) nothing is compared and the models' changelog is not created by
    the service; with the group's model there, the two segments of the stale rule are warned about and counted."""
    s, rules_file = service_setup(worker_settings, tmp_path, NAMING_RULES)
    models = changelog(s, MODELS_TABLE)
    log = tmp_path / "triggers.log"
    service = start_service(s, rules_file, log)
    try:
        poll_until(
            lambda: serving_metrics(service),
            lambda m: "segment_worker_triggers_rules_unknown_personas" in m,
            30,
            "metrics",
        )
        assert service.metrics()["segment_worker_triggers_rules_unknown_personas"] == 0
    finally:
        service.stop()
    admin = KafkaTopicAdmin(s.bootstrap_servers)
    try:
        assert admin.partitions([models])[models] is None  # not created by the service
    finally:
        admin.close()
    model = model_of(3, [[1, 0], [0, 1]], ["p1", "p2"], ["creators", "readers"])
    create_topics(s.bootstrap_servers, {models: 1})
    produce(s.bootstrap_servers, models, [(changelog_key(MODEL_KEY), model.to_bytes())])
    service = start_service(s, rules_file, log)
    try:
        poll_until(
            lambda: serving_metrics(service),
            lambda m: m.get("segment_worker_triggers_rules_unknown_personas") == 2,
            30,
            "two unknown personas counted",
        )
    finally:
        service.stop()
    text = log.read_text()
    assert "campaign stale names 'p9', which is no persona of model v3" in text and "'p7'" in text
    assert "campaign by-id" not in text and "campaign by-name" not in text


OPS_RULES = """
campaigns:
  - {name: ops-merges, when: {persona_event: [merged, retired]}, channel: slack}
  - {name: ops-all-new, when: {persona_event: emerged}}
  - {name: to-readers, when: {from: "*", to: readers}}
"""


def test_persona_events_alert_operators_started_before_any_persona_topic(
    worker_settings: Settings, tmp_path: Path
) -> None:
    """The service first, on a broker without the persona topic (it creates it with the worker's spec); the
    trainer's events arrive after, one of them twice and beside a record that is none: one alert per event and
    campaign that asks for its kind (the same record again for the event announced again), schema-valid, naming
    the rule left without its persona; the unreadable record dead-lettered, the service going on."""
    app = worker_settings.app_id
    s, rules_file = service_setup(
        worker_settings,
        tmp_path,
        OPS_RULES,
        persona_topic=f"{app}-personas",
        persona_notifications_topic=f"{app}-persona-notifications",
    )
    service = start_service(s, rules_file, tmp_path / "triggers.log")
    try:
        poll_until(lambda: serving_metrics(service), lambda m: "segment_worker_triggers_users" in m, 30, "metrics")
        merged, emerged = sorted(persona_events(), key=lambda e: e["kind"], reverse=True)
        records = [(event_key(e).encode(), codec.dumps(e)) for e in (merged, emerged, merged)]
        produce(s.bootstrap_servers, s.persona_topic, [*records, (b"p9", b"not a persona event")])
        alerts = [
            codec.loads(r.value)
            for r in wait_for_records(s.bootstrap_servers, s.persona_notifications_topic, lambda rs: len(rs) >= 3, 60)
        ]
        dead = wait_for_records(s.bootstrap_servers, f"{s.notifications_topic}-dlq", lambda rs: len(rs) >= 1, 60)
        metrics = service.metrics()
    finally:
        service.stop()
    for alert in alerts:
        jsonschema.validate(alert, PERSONA_SCHEMA)
    assert Counter((a["campaign"], a["kind"]) for a in alerts) == {
        ("ops-merges", "merged"): 2,
        ("ops-all-new", "emerged"): 1,
    }
    first, again = [a for a in alerts if a["kind"] == "merged"]
    assert first == again  # announced again: the same record (a sender dedupes by notification_id)
    assert first["rules_naming_gone"] == [{"campaign": "to-readers", "segment": "readers"}]
    assert [r.headers["dlq.reason"] for r in dead] == [b"invalid_persona_event"]
    assert metrics["segment_worker_triggers_persona_notifications_total|campaign=ops-merges|kind=merged"] == 2
