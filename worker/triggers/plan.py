"""From one segment change to the notifications it causes, for one user's trigger state. Pure: no Kafka.

Every decision is taken in the change's event time (``changed_at``), so a replay of the change topic plans the
same notifications, with the same ids, whenever it runs:

* **dedupe** — a change whose per-user ``sequence`` the state has handled is a re-delivery: nothing is planned;
* **quiet hours** — a notification falling inside them in the user's local time (the change's ``timezone``, UTC
  when unknown) is deferred to their end, not dropped; across a DST change the local clock time is kept;
* **cooldown** — per user and campaign, measured between ``send_at`` times;
* **daily cap** — per user, counted on the user's local calendar day of ``send_at``, over every campaign;
* **holdout** — a deterministic share of users per campaign (hash of user and campaign) gets a record with
  ``holdout: true`` that senders skip: the control group. A holdout record passes the same cooldown and cap, and
  counts in them as if sent, so treated and control users stay eligible alike.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from worker.events.timefmt import format_rfc3339, parse_timestamp, time_zone
from worker.triggers.effect import Exposure, Outcomes
from worker.triggers.rules import Ancestry, Campaign, QuietHours, Rules

KEEP_DAYS = 3  # local days of counts kept per user (changes arrive roughly in event-time order)
EXPOSURE_GRACE_MS = 86_400_000  # an exposure is kept this long past its goal window (late goal events)


@dataclass(slots=True)
class TriggerState:
    """What the trigger service keeps per user (survives restarts through its changelog)."""

    last_sequence: int = 0  # the newest change handled
    day_counts: dict[str, int] = field(default_factory=dict)  # local date (ISO) -> notifications planned
    last_sent: dict[str, int] = field(default_factory=dict)  # campaign -> send_at (epoch ms) of its newest
    outcomes: Outcomes = field(default_factory=Outcomes)  # campaign goals: exposures and conversions

    def to_fields(self) -> list[Any]:
        return [self.last_sequence, self.day_counts, self.last_sent, self.outcomes.to_fields()]

    @classmethod
    def from_fields(cls, wire: list[Any]) -> TriggerState:
        outcomes = Outcomes.from_fields(wire[3]) if len(wire) > 3 else Outcomes()
        return cls(int(wire[0]), dict(wire[1]), dict(wire[2]), outcomes)


@dataclass(frozen=True, slots=True)
class Notification:
    notification_id: str
    user_id: str
    campaign: str
    channel: str
    change_event_id: str
    send_at: int  # epoch ms
    holdout: bool
    deferred: bool  # moved to the end of quiet hours
    changed_at: int
    from_segment: str | None
    to_segment: str
    to_segment_name: str | None
    timezone: str
    reasons: tuple[str, ...]

    def to_record(self) -> dict[str, Any]:
        """The ``notification.v1`` record (schemas/notification.v1.json)."""
        return {
            "schema": "notification.v1",
            "notification_id": self.notification_id,
            "user_id": self.user_id,
            "campaign": self.campaign,
            "channel": self.channel,
            "change_event_id": self.change_event_id,
            "send_at": format_rfc3339(self.send_at),
            "holdout": self.holdout,
            "deferred": self.deferred,
            "changed_at": format_rfc3339(self.changed_at),
            "from_segment": self.from_segment,
            "to_segment": self.to_segment,
            "to_segment_name": self.to_segment_name,
            "timezone": self.timezone,
            "reasons": list(self.reasons),
        }


@dataclass(slots=True)
class Plan:
    notifications: list[Notification] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (campaign, "cooldown" or "daily_cap")
    exposures: list[Exposure] = field(default_factory=list)  # of campaigns with a goal, treated and holdout
    duplicate: bool = False


def notification_id(change_event_id: str, campaign: str) -> str:
    """One notification per change and campaign, whatever re-deliveries and restarts happen."""
    return hashlib.blake2b(f"{change_event_id}\x1f{campaign}".encode(), digest_size=16).hexdigest()


def in_holdout(user_id: str, campaign: Campaign) -> bool:
    if campaign.holdout <= 0.0:
        return False
    h = hashlib.blake2b(f"{user_id}\x1f{campaign.name}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64 < campaign.holdout


def defer(t: int, zone_name: str | None, quiet: QuietHours | None) -> tuple[int, bool]:
    """(send time, deferred): ``t`` itself, or the end of the quiet hours it falls in, in local time."""
    if quiet is None:
        return t, False
    zone = time_zone(zone_name) or UTC
    local = datetime.fromtimestamp(t / 1000, tz=zone)
    if not quiet.contains(local.time().replace(tzinfo=None)):
        return t, False
    end_day = local.date()
    if quiet.start > quiet.end and local.time().replace(tzinfo=None) >= quiet.start:
        end_day += timedelta(days=1)  # in the evening part of a window across midnight
    end = datetime.combine(end_day, quiet.end, tzinfo=zone)
    # a wall-clock time a DST change skips maps to its instant after the change; one it repeats, to the first
    return int(end.astimezone(UTC).timestamp() * 1000), True


def local_day(t: int, zone_name: str | None) -> date:
    return datetime.fromtimestamp(t / 1000, tz=time_zone(zone_name) or UTC).date()


def plan(change: dict[str, Any], state: TriggerState, rules: Rules, ancestry: Ancestry | None = None) -> Plan:
    """The notifications one ``segment-change.v1`` record causes; updates ``state``. ``ancestry``: the current
    model's (rules by lineage)."""
    out = Plan()
    sequence = int(change.get("sequence") or 0)
    if sequence and sequence <= state.last_sequence:
        out.duplicate = True
        return out
    state.last_sequence = max(state.last_sequence, sequence)
    user = change["user_id"]
    t = parse_timestamp(change["changed_at"])
    zone_name = change.get("timezone") if time_zone(change.get("timezone")) else None
    before = (change.get("from_segment"), change.get("from_segment_name"))
    after = (change["to_segment"], change.get("to_segment_name"))
    reasons = tuple(r["feature"] for r in change.get("reasons") or ())
    trigger = str(change.get("trigger") or "event")
    for campaign in rules.campaigns:
        if not campaign.matches(before, after, trigger, ancestry):
            continue
        send_at, deferred = defer(t, zone_name, campaign.quiet_hours)
        last = state.last_sent.get(campaign.name)
        if last is not None and send_at - last < campaign.cooldown_ms:
            out.skipped.append((campaign.name, "cooldown"))
            continue
        day = local_day(send_at, zone_name).isoformat()
        if campaign.max_per_day is not None and state.day_counts.get(day, 0) >= campaign.max_per_day:
            out.skipped.append((campaign.name, "daily_cap"))
            continue
        state.day_counts[day] = state.day_counts.get(day, 0) + 1
        state.last_sent[campaign.name] = max(send_at, last or send_at)
        holdout = in_holdout(user, campaign)
        if campaign.goal is not None:
            goal = campaign.goal
            exposure = Exposure(campaign.name, after[0], holdout, send_at, send_at + goal.within_ms, goal.event_type)
            state.outcomes.expose(exposure)
            out.exposures.append(exposure)
        out.notifications.append(
            Notification(
                notification_id=notification_id(change["event_id"], campaign.name),
                user_id=user,
                campaign=campaign.name,
                channel=campaign.channel,
                change_event_id=change["event_id"],
                send_at=send_at,
                holdout=holdout,
                deferred=deferred,
                changed_at=t,
                from_segment=before[0],
                to_segment=after[0],
                to_segment_name=after[1],
                timezone=zone_name or "UTC",
                reasons=reasons,
            )
        )
    state.outcomes.expire(t - EXPOSURE_GRACE_MS)
    if state.day_counts:  # bounded: the newest few local days
        newest = max(state.day_counts)
        oldest = (date.fromisoformat(newest) - timedelta(days=KEEP_DAYS - 1)).isoformat()
        for day in [d for d in state.day_counts if d < oldest]:
            del state.day_counts[day]
    return out


def observe_event(state: TriggerState, event_type: str, t: int, goals: set[str]) -> list[Exposure]:
    """A user event of a goal type: the exposures it converts (remembered too, for exposures read after it)."""
    hits = state.outcomes.event(event_type, t, goals)
    state.outcomes.expire(t - EXPOSURE_GRACE_MS)
    return hits
