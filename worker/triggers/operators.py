"""From one persona-change event to the operators' alerts it causes (``persona-notification.v1``). Pure: no Kafka.

A campaign ``when: {persona_event: retired}`` (one kind or a list) gets one record per persona-change event of
those kinds: what happened in words, the personas before and after, where their users went, and the user
campaigns of the same rules file that name a persona the event takes away (a rule that now matches nothing, or
only what a lineage still holds). The trainer may announce a version's events again after a crash (same
``event_id``): the record is the same, with the same ``notification_id``, so a sender dedupes by it.
"""

from __future__ import annotations

from typing import Any

from worker.triggers.plan import notification_id
from worker.triggers.rules import Rules

SCHEMA = "persona-notification.v1"


def persona_notifications(event: dict[str, Any], rules: Rules) -> list[dict[str, Any]]:
    """The alerts of ``event`` (a ``persona-change.v1`` record), one per campaign that asks for its kind."""
    kind = event["kind"]
    campaigns = [c for c in rules.persona_campaigns if kind in c.persona_events]
    if not campaigns:
        return []
    kept = {p["id"] for p in event["to"]}
    gone = [(p["id"], p["name"]) for p in event["from"] if p["id"] not in kept]
    named = [{"campaign": c, "segment": seg} for c, seg in rules.naming(gone)]
    return [
        {
            "schema": SCHEMA,
            "notification_id": notification_id(event["event_id"], c.name),
            "campaign": c.name,
            "channel": c.channel,
            "persona_event_id": event["event_id"],
            "kind": kind,
            "model_version": event["model_version"],
            "at": event["at"],
            "summary": summary(event),
            "from": [{"id": p["id"], "name": p["name"], "users": p["users"]} for p in event["from"]],
            "to": [{"id": p["id"], "name": p["name"], "users": p["users"]} for p in event["to"]],
            "flows": event["flows"],
            "rules_naming_gone": named,
        }
        for c in campaigns
    ]


def summary(event: dict[str, Any]) -> str:
    """The event in one sentence, for a chat message or a mail subject."""
    before = ", ".join(f"{p['id']} ({p['name']})" for p in event["from"])
    after = ", ".join(f"{p['id']} ({p['name']})" for p in event["to"])
    went = ", ".join(f"{f['to']} {f['users']:,}" for f in event["flows"] if f["from"] != f["to"])
    where = f"; its window's users went to {went}" if went and event["kind"] in ("retired", "merged") else ""
    text = {
        "emerged": f"a new persona emerged: {after}",
        "split": f"{before} split into {after}",
        "merged": f"{before} merged into {after}",
        "retired": f"persona {before} retired",
        "drifted": f"persona {after} drifted (distance {event.get('distance')})",
        "renamed": f"persona {before} is now named {after}",
    }.get(event["kind"], f"{event['kind']}: {before} -> {after}")
    return f"model v{event['model_version']}: {text}{where}"
