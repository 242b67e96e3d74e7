"""``segment-worker report -o personas.html``: the personas page of the whole group, read from its topics.

The worker's own page (``GET /personas/view``) counts the users of the partitions that worker holds and the moves
it delivered since it started; the report reads what every worker wrote: the current model (the models table's
changelog, key ``current``), every persona-change event (``PERSONA_TOPIC``) and every segment change
(``OUTPUT_TOPIC``), whose last change per user gives the sizes now. Topics are only read, never created.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker import codec
from worker.clustering.snapshot import ModelSnapshot
from worker.errors import TopicError
from worker.events.timefmt import parse_timestamp
from worker.kafkaio import read_all, read_each
from worker.kafkasecurity import kafka_python_config
from worker.personas.page import build, render, window_ms
from worker.personas.timeline import Timeline
from worker.runtime.modelpin import MODEL_KEY, changelog_key
from worker.settings import Settings
from worker.topics import MODELS_TABLE, KafkaTopicAdmin, changelog


@dataclass
class GroupView:
    """What the group's topics hold: the current model, the persona events, the moves and each user's segment."""

    model: ModelSnapshot | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    timeline: Timeline = field(default_factory=Timeline)
    segments: dict[str, str] = field(default_factory=dict)  # user -> segment after the user's last change
    changes: int = 0

    def add_change(self, change: dict[str, Any]) -> None:
        before, after = change["from_segment"], change["to_segment"]
        self.timeline.add(before, after, parse_timestamp(change["changed_at"]), change.get("trigger", "event"))
        if after is None:
            self.segments.pop(change["user_id"], None)
        else:
            self.segments[change["user_id"]] = after
        self.changes += 1

    def sizes(self) -> dict[str, int]:
        return dict(Counter(self.segments.values()))


def read_group(settings: Settings, timeout: float = 120.0) -> GroupView:
    """The group's topics, each read to its end as of now (the changes as they come: a log of millions of users
    is never held whole)."""
    models, personas, changes = changelog(settings, MODELS_TABLE), settings.persona_topic, settings.output_topic
    security = kafka_python_config(settings)
    admin = KafkaTopicAdmin(settings.bootstrap_servers, security)
    try:
        found = admin.partitions([models, personas, changes])
    finally:
        admin.close()
    if found[changes] is None:
        raise TopicError(
            f"no topic {changes!r} at {settings.bootstrap_servers}: nothing to report (is OUTPUT_TOPIC the worker's, "
            "and has the worker applied any event?)"
        )
    view = GroupView()
    if found[models] is not None:
        for r in read_all(settings.bootstrap_servers, models, timeout, security):
            if r.key == changelog_key(MODEL_KEY) and r.value:
                view.model = ModelSnapshot.from_bytes(r.value)
    if found[personas] is not None:
        events = read_all(settings.bootstrap_servers, personas, timeout, security)
        view.events = [codec.loads(r.value) for r in events if r.value]
    for r in read_each(settings.bootstrap_servers, changes, timeout, security):  # a user's: one partition, in order
        if r.value:
            view.add_change(codec.loads(r.value))
    return view


def report(settings: Settings, output: str, window: str | None, now_ms: int | None = None) -> str:
    """Write the page to ``output``; returns a one-line summary."""
    view = read_group(settings)
    scope = f"the whole group: {len(view.segments):,} users, {view.changes:,} changes in {settings.output_topic!r}"
    page = build(
        view.model,
        view.sizes(),
        view.timeline,
        view.events,
        scope=scope,
        window_ms=window_ms(window),
        now_ms=now_ms if now_ms is not None else int(time.time() * 1000),
    )
    Path(output).write_text(render(page), encoding="utf-8")
    version = f"model v{page.model_version}" if page.model_version is not None else "no model yet"
    return (
        f"wrote {output}: {version}, {len(page.cards)} segments, {len(page.flows)} flows, "
        f"{len(page.events)} persona events"
    )
