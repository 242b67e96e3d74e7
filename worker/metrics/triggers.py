"""Prometheus metrics of ``segment-worker triggers`` (its own registry: the trigger process exports these and the
process collectors, not the worker's)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PREFIX = "segment_worker_triggers_"

CHANGES = Counter(PREFIX + "changes", "Segment changes read.", ["outcome"], registry=REGISTRY)
NOTIFICATIONS = Counter(
    PREFIX + "notifications", "Notifications written, by campaign and group.", ["campaign", "group"], registry=REGISTRY
)
SKIPPED = Counter(
    PREFIX + "skipped",
    "Matching changes not notified, by campaign and reason.",
    ["campaign", "reason"],
    registry=REGISTRY,
)
UNKNOWN_PERSONAS = Gauge(
    PREFIX + "rules_unknown_personas",
    "Campaign from/to segments naming no persona of the current model (a retired id, a typo): they match nothing.",
    registry=REGISTRY,
)
USERS = Gauge(PREFIX + "users", "Users with trigger state on this member's partitions.", registry=REGISTRY)
WEBHOOK_ATTEMPTS = Counter(
    PREFIX + "webhook_attempts", "Webhook requests, by outcome: ok, retry, failed.", ["outcome"], registry=REGISTRY
)
DEAD_LETTERED = Counter(
    PREFIX + "dead_lettered", "Notifications the webhook did not take after every attempt.", registry=REGISTRY
)
CAMPAIGN_USERS = Gauge(
    PREFIX + "campaign_users",
    "Users exposed to a campaign (notified or held out) on this member's partitions, by the persona they moved to.",
    ["campaign", "persona", "group"],
    registry=REGISTRY,
)
CAMPAIGN_CONVERSIONS = Gauge(
    PREFIX + "campaign_conversions",
    "Of those, users with a goal event within the campaign's window after send_at.",
    ["campaign", "persona", "group"],
    registry=REGISTRY,
)
PERSONA_NOTIFICATIONS = Counter(
    PREFIX + "persona_notifications",
    "Alerts written on persona-change events (campaigns with when.persona_event).",
    ["campaign", "kind"],
    registry=REGISTRY,
)
GOAL_EVENTS = Counter(PREFIX + "goal_events", "User events of a campaign goal type read.", registry=REGISTRY)
