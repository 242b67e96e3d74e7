"""Which model a restarted worker re-applies its partitions' records with: the one the crashed run used.

A batch's outputs are delivered before its users' states and positions (:mod:`worker.outbox`), so after a crash
the records since the last durable position are applied again; a change the model decides is the same only under
the same model. Two rules make "the same model" known:

- **A model is adopted only at a durable point.** Each partition's position record carries the version of the model
  in use (0: none yet). When the worker adopts a model (or gains partitions), it queues every owned partition's
  record in a sealed outbox round: no output of a record applied under that model is sent before the broker has
  them. So every output delivered after a partition's durable position came from the version its record names (a
  later adoption's record would have landed first).
- **A restarted worker pins that version** until each pinned partition's position reaches the offset its log ended
  at when the worker started (the crashed run cannot have applied anything beyond it); then it adopts the newest
  published model, at a durable point again.

The trainer keeps the last :data:`MODEL_SLOTS` versions in the models table beside the current one, so the pinned
snapshot can be read back. Pure: no Faust.
"""

from __future__ import annotations

from collections.abc import Iterable

from worker import codec

MODEL_KEY = "current"  # the newest published model in the models table
MODEL_SLOTS = 16  # versions kept beside it (version v under slot_key(v)), for a restarted worker's pin
META_MODEL = "model"  # the model version in a partition's position record


def slot_key(version: int) -> str:
    """The models-table key a model version is kept under (a newer version takes the slot of one 16 older)."""
    return f"v{version % MODEL_SLOTS}"


def changelog_key(key: str) -> bytes:
    """A models-table key as its changelog's records carry it: Faust writes the table's ``str`` keys as JSON
    (``"current"`` with its quotes), which a reader of the topic outside Faust compares with."""
    return codec.dumps(key)


class ModelPin:
    def __init__(self) -> None:
        self.version: int | None = None  # pinned (0: no model), or None
        self.until: dict[tuple[str, int], int] = {}  # (stream, partition) -> offset the pin holds up to

    @property
    def active(self) -> bool:
        return self.version is not None

    def hold(self, version: int, until: dict[tuple[str, int], int]) -> None:
        self.version, self.until = version, dict(until)

    def release_reached(self, positions: Iterable[tuple[str, int, int]]) -> bool:
        """Drop what the positions (stream, partition, next offset) reached, and partitions no longer open; True
        when that ends the pin."""
        if self.version is None:
            return False
        at = {(stream, p): position for stream, p, position in positions}
        self.until = {key: end for key, end in self.until.items() if key in at and at[key] < end}
        if self.until:
            return False
        self.version = None
        return True


def recorded_version(metas: Iterable[dict[str, object]]) -> int | None:
    """The model version partitions' position records name (the newest, should they differ); None when none does
    (records written before versions were kept, or no record)."""
    versions = [v for meta in metas if isinstance(v := meta.get(META_MODEL), int)]
    return max(versions) if versions else None
