"""Which partitions this worker holds, with their state read: assignment changes, readiness, shutdown.

A partition counts as owned once its state is read from the changelog (until then ``/users/{id}`` answers 503 for
its users). On a changed assignment the keys of partitions no longer ours are dropped, gained partitions are read
whole, the indexes (persona counts, silence timers) rebuilt, and each consumed stream's gate reopened at the
position the state holds (or the start of the log, for a partition never consumed here).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust

from worker import codec
from worker.changes import Segmenter
from worker.routing import partition_keys
from worker.runtime import faust_internals as fi
from worker.runtime.delivery import Deliveries
from worker.runtime.positions import Positions
from worker.runtime.recovery import ChangelogReader
from worker.runtime.topology import Topology
from worker.settings import Settings
from worker.topics import TopicWatch

log = logging.getLogger("worker")

TAIL_RECORDS = 5000  # model changelog records re-read after Faust's recovery (see worker.runtime.recovery)


def meta_keys(partitions: int) -> list[str]:
    """The key of each partition's positions in the partition-meta table (one that lands on that partition)."""
    return partition_keys(partitions, "__partition-meta-")


class Ownership:
    def __init__(
        self,
        settings: Settings,
        topo: Topology,
        changelog: ChangelogReader,
        positions: Positions,
        segmenter: Segmenter,
        outbox: Deliveries,
        topics: TopicWatch,
        beginning: Any,  # async (topic, partitions) -> {partition: first offset}: a worker.refetch.RangeReader's
    ) -> None:
        self.settings, self.topo, self.changelog = settings, topo, changelog
        self.positions, self.segmenter, self.outbox, self.topics = positions, segmenter, outbox, topics
        self._beginning = beginning
        self.app: faust.App = topo.app
        self.owned: set[int] = set()  # partitions whose state is read
        self.closing = False  # shutdown under way: timers and the trainer stop, broker reads end
        self._models_read = False
        self._meta_keys = meta_keys(settings.partitions)

    def assigned(self) -> set[int]:
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == self.settings.input_topic}

    def settled(self) -> bool:
        """Recovered and not rebalancing: only then is the table whole. Timers run during recovery, and a write
        from a half-recovered table would put an old state back (lost events after a restart)."""
        app = self.app
        return bool(app.tables.recovery.completed.is_set() and not app.rebalancing and not app.in_recovery)

    def ready(self) -> bool:
        """Joined the group, not rebalancing, and every assigned partition's state read (a member with no partition
        assigned, when there are more members than partitions, is ready: it answers the API by routing)."""
        return not self.closing and self.settled() and self.owned == self.assigned() and self.topics.ok

    def revoked(self) -> None:
        """A rebalance may hand back the same partitions, possibly after another member wrote to them: every
        partition is read again from the changelog, and the indexes rebuilt, on the next batch."""
        self.owned.clear()

    async def refresh(self) -> set[int]:
        """Re-read what the changelog holds for partitions gained since the last call; returns them."""
        current = self.assigned()
        n = self.settings.partitions
        if beyond := sorted(p for p in current if p >= n):  # the input has more partitions than the plan
            self.topics.flag(
                f"{self.settings.input_topic} partitions {beyond} assigned, beyond {n} (SEGMENT_WORKER_PARTITIONS)"
            )
            return set()
        gained = current - self.owned
        if current != self.owned:
            began = time.monotonic()
            self.owned.intersection_update(current)
            await self.outbox.drain()  # what the changelog holds includes every write of ours
            await self._read_state(current, gained)
            metas = self.metas(current)
            self.segmenter.rebuild(set(current), {p: int(meta["max_ts"]) for p, meta in metas.items()})
            await self._open_positions(current, gained, metas)
            self.owned.update(current)
            users = len(self.topo.users)
            log.info(
                "owning partitions %s: %d users in state (%.1fs)", sorted(current), users, time.monotonic() - began
            )
        return gained

    def metas(self, partitions: set[int]) -> dict[int, Any]:
        """Each partition's position record, as its state holds it: positions, newest event time, model version."""
        table, keys = self.topo.part_meta, self._meta_keys
        return {p: codec.loads(raw) for p in partitions if (raw := table.get(keys[p])) is not None}

    async def _read_state(self, current: set[int], gained: set[int]) -> None:
        """Keys of partitions no longer ours go; gained ones are read whole; the model table once (every worker
        holds its one partition)."""
        for table in (self.topo.users, self.topo.part_meta):
            fi.drop_partitions(table, current)
            started = time.monotonic()
            from_local, applied = await self.changelog.read(table, gained)
            log.info(
                "%s: %d changelog records of partitions %s read in %.1fs%s",
                table.name,
                applied,
                sorted(gained),
                time.monotonic() - started,
                f" after {from_local} from the local copy" if self.changelog.local is not None else "",
            )
        if not self._models_read:
            await self.changelog.read(self.topo.models, {0}, tail=TAIL_RECORDS)
            self._models_read = True

    async def _open_positions(self, current: set[int], gained: set[int], metas: dict[int, Any]) -> None:
        self.positions.keep(current)
        for stream, topic in self.topo.stream_topics.items():
            stored = {p: int(metas[p][stream]) for p in gained if stream in metas.get(p, {})}
            if gained - set(stored):  # never consumed here: from the start of the log
                stored.update(await self._beginning(topic, sorted(gained - set(stored))))
            for p, position in stored.items():
                self.positions.open(stream, p, position, time.monotonic())
