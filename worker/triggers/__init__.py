"""Reacting to segment changes: rules (which change notifies whom), the per-user plan (quiet hours, caps,
cooldowns, holdouts, dedupe). The service that runs them on the change topic is ``segment-worker triggers``."""

from __future__ import annotations

from worker.triggers.plan import Notification, Plan, TriggerState, plan
from worker.triggers.rules import Campaign, Rules, RulesError, load_rules, parse_rules

__all__ = [
    "Campaign",
    "Notification",
    "Plan",
    "Rules",
    "RulesError",
    "TriggerState",
    "load_rules",
    "parse_rules",
    "plan",
]
