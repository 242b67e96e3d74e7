"""The changelog's write-behind: user states and positions written once per interval, not once per batch.

A batch's outputs go to the outbox at once; the states it changed wait in the segmenter
(:meth:`worker.changes.Segmenter.take_unwritten`), read from there by the next batches, and are written together
every ``state_write_interval`` seconds: a user with many events in an interval is written once, as Kafka Streams'
record cache does until its commit interval. The order crash safety needs (:mod:`worker.outbox`) holds: every
state written is as of batches whose outputs the outbox got before it, and the partitions' positions are written
with the states that cover them, never before. A crash re-applies what the written positions do not cover (up to
an interval, where it was the batches of one delivery round before): the offset fence keeps the counts right.

A user with an output in a batch (a segment change, a membership) is written with it, as every user was before:
the output must never be delivered ahead of the state that made it for longer than one delivery round. A
re-application after a crash may meet a user's events in another order (the input and the re-routing topic
interleave as they are fetched); for a user whose state is older than a delivered change, it could decide that
change anew, differently, under the same id. A user with no output in the window has nothing delivered to
contradict: whatever its re-application decides is emitted then, with its state.

Everything waiting is written at once, whatever the interval: before a model is recorded (a sealed write: the
position records name it before any output made under it), before the assignment changes (the next owner reads the
changelog), at shutdown, and when ``state_cache_users`` users wait (the states waiting are kept in memory decoded).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

from worker import codec, metrics
from worker.changes import BatchResult, Segmenter
from worker.features import wire
from worker.features.state import UserState
from worker.producing import Record
from worker.runtime.modelpin import META_MODEL
from worker.runtime.ownership import meta_keys
from worker.runtime.positions import Positions
from worker.runtime.topology import Topology
from worker.settings import Settings

Staged = list[tuple[Any, Record]]  # (table key, its changelog record), as the outbox takes them


class StateWrites:
    def __init__(self, settings: Settings, topo: Topology, segmenter: Segmenter, positions: Positions) -> None:
        self.topo, self.segmenter, self.positions = topo, segmenter, positions
        self.interval = settings.state_write_interval
        self.most = max(1, settings.state_cache_users)  # users waiting that make the write due at once
        self._meta_keys = meta_keys(settings.partitions)
        self._partitions: set[int] = set()  # whose position records are to be written
        self._since: float | None = None  # when the oldest write waiting was made
        segmenter.defer_writes()

    def note(self, partitions: Iterable[int], now: float) -> None:
        """A batch changed states and moved these partitions' positions (or a model is to be named in them)."""
        self._partitions.update(partitions)
        if self._since is None and self.pending:
            self._since = now

    @property
    def pending(self) -> bool:
        return bool(self._partitions) or self.segmenter.unwritten > 0

    def due(self, now: float) -> bool:
        since = self._since
        return since is not None and (now - since >= self.interval or self.segmenter.unwritten >= self.most)

    def with_outputs(self, res: BatchResult) -> Staged:
        """The states of the users with an output in this batch, staged, to be written with it."""
        users = [uid for uid, _, _ in res.changes]
        users += [uid for uid, _, _, _ in res.memberships]
        return self._stage_states(self.segmenter.take_unwritten(users)) if users else []

    def take(self) -> tuple[Staged, Staged, Callable[[], None]]:
        """The waiting states and the positions they reach, staged in the tables (the store holds them from now),
        and what makes those positions durable once the outbox delivered them."""
        states = self._stage_states(self.segmenter.take_unwritten())
        metas, durable = self._stage_positions(self._partitions)
        self._partitions, self._since = set(), None
        return states, metas, functools.partial(self.positions.stored, durable)

    def _stage_states(self, unwritten: dict[str, UserState | None]) -> Staged:
        encode = wire.encode
        states = self.topo.stage_all(
            self.topo.users, [(uid, None if st is None else encode(st)) for uid, st in unwritten.items()]
        )
        metrics.STATES_WRITTEN.inc(len(states))
        return states

    def _stage_positions(self, partitions: set[int]) -> tuple[Staged, dict[tuple[str, int], int]]:
        """The partitions' positions (and newest event time, and the model in use) as state records, and the
        positions they make durable once delivered."""
        metas = []
        durable: dict[tuple[str, int], int] = {}
        model = self.segmenter.model
        version = model.version if model is not None else 0
        for p in partitions:
            at = self.positions.state_of(p)
            durable.update({(stream, p): position for stream, position in at.items()})
            meta = {"max_ts": self.segmenter.watermarks.max_ts.get(p, 0), META_MODEL: version, **at}
            metas.append((p, self.topo.stage(self.topo.part_meta, self._meta_keys[p], codec.dumps(meta))))
        return metas, durable
