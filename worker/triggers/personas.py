"""The personas the trigger rules name, against the worker group's current model.

A campaign rule keyed on a persona id stops matching anything once the persona retires (a split, a merge, a
re-check that dropped it) or when the rules file has a typo. The trigger service reads the group's current model
from its changelog (``<APP_ID>-models-changelog``, key ``current``) at start and every ``CHECK_EVERY`` seconds, logs
a warning for each rule segment that names no persona of it, by id or by name, and sets
``segment_worker_triggers_rules_unknown_personas``. Before the first model nothing is compared (and the topic is
never created by this reader: a missing one is left to the worker).
"""

from __future__ import annotations

import asyncio
import logging
import time

from worker.clustering.snapshot import ModelSnapshot
from worker.kafkasecurity import kafka_python_config
from worker.metrics import triggers as metrics
from worker.refetch import RangeReader
from worker.runtime.modelpin import MODEL_KEY, changelog_key
from worker.settings import Settings
from worker.topics import MODELS_TABLE, KafkaTopicAdmin, changelog
from worker.triggers.rules import Rules

log = logging.getLogger("worker.triggers")

CHECK_EVERY = 60.0  # seconds between reads of the current model
TAIL = 64  # records read back from the changelog's end (a model writes two: its slot and `current`)


class PersonaCheck:
    def __init__(self, settings: Settings, rules: Rules, reader: RangeReader) -> None:
        self.settings, self.rules, self.reader = settings, rules, reader
        self.topic = changelog(settings, MODELS_TABLE)
        self.version = 0  # of the model last compared
        self.unknown: list[tuple[str, str]] = []
        self.ancestry: dict[str, tuple[str, ...]] = {}  # the current model's, for rules by lineage
        self._next = 0.0

    async def due(self) -> None:
        """Compare when ``CHECK_EVERY`` has passed since the last time. A check that fails (the broker away, an
        unreadable model) is logged and tried again next time: it never stops the notifications."""
        if time.monotonic() >= self._next:
            self._next = time.monotonic() + CHECK_EVERY
            try:
                await self.check()
            except Exception as exc:
                log.warning(
                    "the current model's personas could not be read (tried again in %.0fs): %s", CHECK_EVERY, exc
                )

    async def at_least(self, version: int) -> None:
        """Read the current model now when a change names a newer version than the one compared (a rule by lineage
        must know a persona that just split off), failures as in :meth:`due`."""
        if version > self.version:
            self._next = 0.0
            await self.due()

    async def check(self) -> list[tuple[str, str]]:
        """The rule segments the current model has no persona for (warned once per model version)."""
        model = await self._current()
        if model is None or model.version == self.version:
            return self.unknown
        self.version, self.ancestry = model.version, model.ancestry
        self.unknown = self.rules.unknown_personas(model.persona_ids, model.persona_names, model.ancestry)
        metrics.UNKNOWN_PERSONAS.set(len(self.unknown))
        for campaign, segment in self.unknown:
            log.warning(
                "campaign %s names %r, which is no persona of model v%d (personas: %s): the rule matches nothing",
                campaign,
                segment,
                model.version,
                ", ".join(f"{i} {n!r}" for i, n in zip(model.persona_ids, model.persona_names, strict=True)),
            )
        return self.unknown

    async def _current(self) -> ModelSnapshot | None:
        if not await asyncio.to_thread(self._exists):
            return None
        end = (await self.reader.ends(self.topic, [0]))[0]
        records, _ = await self.reader.read(self.topic, 0, max(0, end - TAIL), end)
        for r in reversed(records):
            if r.key == changelog_key(MODEL_KEY) and r.value:
                return ModelSnapshot.from_bytes(r.value)
        return None

    def _exists(self) -> bool:
        """Whether the changelog exists, asked without the broker creating it (a consumer naming it would)."""
        admin = KafkaTopicAdmin(self.settings.bootstrap_servers, kafka_python_config(self.settings))
        try:
            return admin.partitions([self.topic])[self.topic] is not None
        finally:
            admin.close()
