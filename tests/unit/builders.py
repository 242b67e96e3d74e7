"""Builders shared by the unit tests: events and feature states, input records, a segmenter step, a model with
two known personas."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from worker import codec
from worker.changes import BatchResult, InputRecord, Segmenter
from worker.clustering import ModelSnapshot
from worker.events.ingest import UserEvent
from worker.features import FeatureSpace, UserState, apply_event
from worker.settings import Settings

DAY = 86_400_000
T0 = 1_767_225_600_000  # Thursday 2026-01-01T00:00Z


def two_persona_model(settings: Settings) -> ModelSnapshot:
    space = FeatureSpace(("view", "purchase"), settings.half_lives_ms)
    rec = record_factory()
    store: dict[str, UserState] = {}
    seg = Segmenter(settings, store, lambda _u: 0)
    for i in range(10):
        step(seg, [rec("v", "view", T0 + i * 3_600_000), rec("b", "purchase", T0 + i * 3_600_000, 50.0)])
    viewer, buyer = store["v"], store["b"]
    x = space.matrix([viewer, buyer], [viewer.last_ts, buyer.last_ts])
    mean = x.mean(0)
    scale = np.where(x.std(0) > 0, x.std(0), 1.0)
    centroids = (x - mean) / scale
    return ModelSnapshot(1, space, mean, scale, centroids, ("p1", "p2"), ("viewers", "buyers"), 2, 3)


def step(seg: Segmenter, records: list[InputRecord]) -> BatchResult:
    """What the Faust glue does around the core: process a batch, write back the changed states."""
    res = seg.process(records, 2**62, 0.0)
    seg.store.update(res.dirty)
    for uid in res.erased:  # the tombstones
        seg.store.pop(uid, None)
    return res


class RecordFactory:
    """Input records of events, at consecutive offsets."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self, uid: str, etype: str, t: int, value: float | None = None, partition: int = 0) -> InputRecord:
        self.offset += 1
        body: dict[str, object] = {"user_id": uid, "event_type": etype, "timestamp": t}
        if value is not None:
            body["value"] = value
        return InputRecord(codec.dumps(body), None, partition, self.offset, partition, self.offset, 0.0)


def record_factory() -> Callable[..., InputRecord]:
    return RecordFactory()


HL = (1.0 * DAY, 7.0 * DAY)


def event(
    t: int, etype: str = "view", value: float | None = None, session: str | None = None, tz: str | None = None
) -> UserEvent:
    return UserEvent("u", etype, t, value, session, {"timezone": tz} if tz else None)


def fresh() -> UserState:
    return UserState(len(HL))


def apply(state: UserState, *events: UserEvent) -> UserState:
    for e in events:
        apply_event(state, e, HL, max_types=4, session_gap_ms=1_800_000)
    return state
