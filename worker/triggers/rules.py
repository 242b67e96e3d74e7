"""The trigger rules file (YAML): which segment changes notify whom, through which channel, how often.

::

    defaults:
      quiet_hours: {start: "22:00", end: "08:00"}   # in the user's local time
      max_per_user_per_day: 2                        # in the user's local day
    campaigns:
      - name: win-back
        when: {from: "*", to: "dormant"}              # persona id or name, new, dormant; "*" any; null: first change
                                                       # ({lineage: p3}: p3 and what split off or merged into it;
                                                       # trigger: what caused the change, one or a list)
        channel: push
        cooldown: 7d                                   # per user and campaign
        holdout: 0.1                                   # share kept as control group, deterministic per user+campaign
        goal: {event_type: purchase, within: 7d}
      - name: persona-retired
        when: {persona_event: retired}                 # one or a list of the persona-change kinds: an operator
        channel: ops                                   # alert per event (persona-notification.v1), no user

A campaign may override ``quiet_hours`` and ``max_per_user_per_day``; ``quiet_hours: null`` disables them.
``when.trigger`` limits a campaign to changes of some causes (``segment-change.v1``'s ``trigger``); by default every
cause but ``model_update``: a user the model re-placed because a persona split, merged or retired did nothing new,
and a campaign reacting to it would notify a whole persona at once. Every problem of the file is reported at once,
with where it is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import time
from pathlib import Path
from typing import Any

import yaml

from worker.errors import ConfigError
from worker.personas.registry import PERSONA_EVENTS, RESERVED

ANY = "*"
# the causes of a change to a segment (segment-change.v1 `trigger`; a change to none, erased or consent withdrawn,
# ends the user's notifications instead), and those a campaign reacts to unless its rule says
CHANGE_TRIGGERS = ("event", "silence", "model_update")
DEFAULT_TRIGGERS = frozenset(("event", "silence"))
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}
_CLOCK = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class RulesError(ConfigError):
    """The trigger rules file is missing, not YAML, or not a valid set of rules."""


@dataclass(frozen=True, slots=True)
class QuietHours:
    start: time
    end: time

    def contains(self, t: time) -> bool:
        if self.start <= self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end  # across midnight


@dataclass(frozen=True, slots=True)
class LineageOf:
    """``{lineage: p3}`` in a rule: persona p3 and every persona that split off from it or that it merged into,
    transitively (``ModelSnapshot.ancestry`` of the group's current model)."""

    root: str

    def __str__(self) -> str:
        return f"lineage of {self.root}"


Ancestry = Mapping[str, Sequence[str]]  # persona id -> the ids it descends from


def _names(spec: str | LineageOf, segment: tuple[str | None, str | None], ancestry: Ancestry) -> bool:
    """Whether a rule's ``from``/``to`` names the segment (id, name)."""
    if isinstance(spec, LineageOf):
        return segment[0] is not None and (segment[0] == spec.root or spec.root in ancestry.get(segment[0], ()))
    return spec == ANY or (segment[0] is not None and spec in segment)


@dataclass(frozen=True, slots=True)
class Goal:
    event_type: str
    within_ms: int


@dataclass(frozen=True, slots=True)
class Campaign:
    name: str
    from_segment: str | LineageOf | None  # persona id or name, new, dormant, ANY, a lineage; None: a first change
    to_segment: str | LineageOf
    channel: str
    cooldown_ms: int
    holdout: float
    goal: Goal | None
    quiet_hours: QuietHours | None
    max_per_day: int | None  # None: no cap
    triggers: frozenset[str] = DEFAULT_TRIGGERS
    # an operators' campaign: the persona-change kinds it alerts on (it never matches a user's change)
    persona_events: frozenset[str] = frozenset()

    def matches(
        self,
        before: tuple[str | None, str | None],
        after: tuple[str, str | None],
        trigger: str,
        ancestry: Ancestry | None = None,
    ) -> bool:
        """Whether a change (from (id, name), to (id, name), caused by ``trigger``) is one this campaign reacts
        to; ``ancestry``: the current model's, for rules by lineage."""
        if self.persona_events or trigger not in self.triggers or not _names(self.to_segment, after, ancestry or {}):
            return False
        if self.from_segment is None:
            return before[0] is None
        return _names(self.from_segment, before, ancestry or {})


@dataclass(frozen=True, slots=True)
class Rules:
    campaigns: tuple[Campaign, ...]

    @property
    def persona_campaigns(self) -> tuple[Campaign, ...]:
        """The campaigns that alert on persona-change events (``when: {persona_event: ...}``)."""
        return tuple(c for c in self.campaigns if c.persona_events)

    @property
    def by_lineage(self) -> bool:
        """Whether a campaign names a persona by lineage (and needs the current model's ancestry)."""
        return any(isinstance(seg, LineageOf) for c in self.campaigns for seg in (c.from_segment, c.to_segment))

    def naming(self, personas: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """(campaign, segment) of each user campaign's ``from``/``to`` that names one of ``personas`` ((id, name)
        pairs) by its id, its name or as the root of a lineage."""
        ids = {pid for pid, _ in personas}
        words = ids | {name for _, name in personas}
        return [
            (c.name, str(seg))
            for c in self.campaigns
            if not c.persona_events
            for seg in (c.from_segment, c.to_segment)
            if seg and (seg.root in ids if isinstance(seg, LineageOf) else seg in words)
        ]

    def unknown_personas(
        self, ids: Sequence[str], names: Sequence[str], ancestry: Ancestry | None = None
    ) -> list[tuple[str, str]]:
        """(campaign, segment) of each ``from``/``to`` that names a persona neither by an id nor by a name of the
        model (``ids``, ``names``), or a lineage no persona of it belongs to: a retired id, a typo — such a rule
        matches nothing."""
        known = {ANY, *RESERVED, *ids, *names}
        roots = {*ids, *(root for pid in ids for root in (ancestry or {}).get(pid, ()))}
        return [
            (c.name, str(seg))
            for c in self.campaigns
            for seg in (c.from_segment, c.to_segment)
            if seg and (seg.root not in roots if isinstance(seg, LineageOf) else seg not in known)
        ]


def parse_duration(text: Any, where: str, problems: list[str]) -> int:
    """``"7d"``, ``"12h"``, ``"30m"``, ``"45s"``, ``"2w"`` → milliseconds."""
    m = _DURATION.match(str(text)) if isinstance(text, (str, int, float)) else None
    if m is None:
        problems.append(f"{where}: {text!r} is not a duration like 7d, 12h, 30m")
        return 0
    return int(float(m[1]) * _UNIT_MS[m[2]])


def _clock(text: Any, where: str, problems: list[str]) -> time:
    m = _CLOCK.match(str(text)) if isinstance(text, str) else None
    if m is None:
        problems.append(f"{where}: {text!r} is not a time of day like 22:00")
        return time(0, 0)
    return time(int(m[1]), int(m[2]))


def _quiet(raw: Any, where: str, problems: list[str]) -> QuietHours | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != {"start", "end"}:
        problems.append(f"{where}: expected {{start: 'HH:MM', end: 'HH:MM'}} or null")
        return None
    return QuietHours(_clock(raw["start"], f"{where}.start", problems), _clock(raw["end"], f"{where}.end", problems))


def _cap(raw: Any, where: str, problems: list[str]) -> int | None:
    if raw is None:
        return None
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 0:
        problems.append(f"{where}: expected a whole number >= 0 or null")
        return None
    return raw


def _segment(raw: Any, where: str, problems: list[str], first: bool = False) -> str | LineageOf | None:
    """A rule's ``from`` or ``to``: a persona id or name, a reserved segment, ``*``, ``{lineage: <persona id>}``;
    ``null`` (a user's first change) for ``from`` only."""
    if isinstance(raw, str) or (raw is None and first):
        return raw
    if isinstance(raw, dict) and set(raw) == {"lineage"} and isinstance(raw["lineage"], str) and raw["lineage"]:
        return LineageOf(raw["lineage"])
    expected = "a persona id or name, '*'" + (" or null" if first else "") + ", or {lineage: <persona id>}"
    problems.append(f"{where}: expected {expected}")
    return None


def _triggers(raw: Any, where: str, problems: list[str]) -> frozenset[str]:
    if raw is None:
        return DEFAULT_TRIGGERS
    named = [raw] if isinstance(raw, str) else raw
    if not isinstance(named, list) or not named or any(t not in CHANGE_TRIGGERS for t in named):
        problems.append(f"{where}: expected one or a list of {', '.join(CHANGE_TRIGGERS)}")
        return DEFAULT_TRIGGERS
    return frozenset(named)


def _persona_campaign(raw: dict[str, Any], name: str, where: str, problems: list[str]) -> Campaign:
    """``when: {persona_event: <kind or list>}``: an alert per persona-change event of those kinds, for operators
    (no user: none of a user campaign's quiet hours, caps, cooldown, holdout or goal applies)."""
    for key in sorted(set(raw) - {"name", "when", "channel"}):
        problems.append(f"{where}: {key!r} is for campaigns on users' changes, not on persona events")
    when = raw["when"]
    for key in sorted(set(when) - {"persona_event"}):
        problems.append(f"{where}.when: {key!r} does not go with persona_event")
    named = [when["persona_event"]] if isinstance(when["persona_event"], str) else when["persona_event"]
    if not isinstance(named, list) or not named or any(k not in PERSONA_EVENTS for k in named):
        problems.append(f"{where}.when.persona_event: expected one or a list of {', '.join(PERSONA_EVENTS)}")
        named = list(PERSONA_EVENTS)
    channel = raw.get("channel", "ops")
    if not isinstance(channel, str) or not channel:
        problems.append(f"{where}.channel: expected a name such as ops, email, webhook")
    return Campaign(
        name=name,
        from_segment=ANY,
        to_segment=ANY,
        channel=str(channel),
        cooldown_ms=0,
        holdout=0.0,
        goal=None,
        quiet_hours=None,
        max_per_day=None,
        triggers=frozenset(),
        persona_events=frozenset(named),
    )


def _unknown(raw: dict[str, Any], known: set[str], where: str, problems: list[str]) -> None:
    for key in sorted(set(raw) - known):
        problems.append(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")


def parse_rules(doc: Any) -> Rules:
    problems: list[str] = []
    if not isinstance(doc, dict):
        raise RulesError("trigger rules: expected a mapping with 'campaigns' (and optional 'defaults')")
    _unknown(doc, {"defaults", "campaigns"}, "rules", problems)
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict):
        problems.append("defaults: expected a mapping")
        defaults = {}
    _unknown(defaults, {"quiet_hours", "max_per_user_per_day"}, "defaults", problems)
    quiet = _quiet(defaults.get("quiet_hours"), "defaults.quiet_hours", problems)
    cap = _cap(defaults.get("max_per_user_per_day"), "defaults.max_per_user_per_day", problems)
    raw_campaigns = doc.get("campaigns")
    if not isinstance(raw_campaigns, list) or not raw_campaigns:
        problems.append("campaigns: expected a non-empty list")
        raw_campaigns = []
    campaigns = []
    names: set[str] = set()
    for i, raw in enumerate(raw_campaigns):
        where = f"campaigns[{i}]"
        if not isinstance(raw, dict):
            problems.append(f"{where}: expected a mapping")
            continue
        known = {"name", "when", "channel", "cooldown", "holdout", "goal", "quiet_hours", "max_per_user_per_day"}
        _unknown(raw, known, where, problems)
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            problems.append(f"{where}.name: expected letters, digits, '_', '.', '-' (at most 64)")
            name = f"#{i}"
        elif name in names:
            problems.append(f"{where}.name: {name!r} is used twice")
        names.add(name)
        where = f"campaign {name}"
        when = raw.get("when")
        if isinstance(when, dict) and "persona_event" in when:
            campaigns.append(_persona_campaign(raw, name, where, problems))
            continue
        if not isinstance(when, dict) or "to" not in when or "from" not in when:
            problems.append(f"{where}.when: expected {{from: <persona, '*' or null>, to: <persona or '*'>}}")
            when = {"from": ANY, "to": ANY}
        _unknown(when, {"from", "to", "trigger"}, f"{where}.when", problems)
        before = _segment(when.get("from"), f"{where}.when.from", problems, first=True)
        after = _segment(when.get("to"), f"{where}.when.to", problems) or ANY
        triggers = _triggers(when.get("trigger"), f"{where}.when.trigger", problems)
        channel = raw.get("channel", "push")
        if not isinstance(channel, str) or not channel:
            problems.append(f"{where}.channel: expected a name such as push, email, sms, webhook")
        holdout = raw.get("holdout", 0.0)
        if not isinstance(holdout, (int, float)) or isinstance(holdout, bool) or not 0.0 <= holdout < 1.0:
            problems.append(f"{where}.holdout: expected a share in [0, 1)")
            holdout = 0.0
        goal = None
        if raw.get("goal") is not None:
            g = raw["goal"]
            if not isinstance(g, dict) or not isinstance(g.get("event_type"), str) or "within" not in g:
                problems.append(f"{where}.goal: expected {{event_type: <type>, within: <duration>}}")
            else:
                _unknown(g, {"event_type", "within"}, f"{where}.goal", problems)
                goal = Goal(g["event_type"], parse_duration(g["within"], f"{where}.goal.within", problems))
        campaigns.append(
            Campaign(
                name=name,
                from_segment=before,
                to_segment=after,
                channel=str(channel),
                cooldown_ms=parse_duration(raw["cooldown"], f"{where}.cooldown", problems) if "cooldown" in raw else 0,
                holdout=float(holdout),
                goal=goal,
                quiet_hours=_quiet(raw["quiet_hours"], f"{where}.quiet_hours", problems)
                if "quiet_hours" in raw
                else quiet,
                max_per_day=_cap(raw["max_per_user_per_day"], f"{where}.max_per_user_per_day", problems)
                if "max_per_user_per_day" in raw
                else cap,
                triggers=triggers,
            )
        )
    if problems:
        raise RulesError("trigger rules:\n  " + "\n  ".join(problems))
    return Rules(tuple(campaigns))


def load_rules(path: str | Path) -> Rules:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(f"trigger rules file {path}: {exc.strerror or exc}") from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RulesError(f"trigger rules file {path} is not valid YAML: {exc}") from exc
    return parse_rules(doc)
