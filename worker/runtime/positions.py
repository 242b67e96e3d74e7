"""Where each consumed partition stands, pure: the offset gate (the next record to apply), the position the
changelog holds (durable: delivered with the batch that reached it), the position the consumer group was told
(committed), and when to ask the broker about a partition whose position stands still (the probe schedule).

The group's committed offset only says where a restarted consumer starts reading; what was applied is the durable
position kept in state (:mod:`worker.changes.gate`). A probe finds records the consumer dropped and never
re-delivers: a partition whose position has not moved for ``probe_after`` seconds is read from the broker; records
a probe found that the consumer still has not delivered by the next probe are applied from that read. A partition
with nothing new is probed less and less often, up to ``probe_max`` seconds apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from worker.changes.gate import OffsetGate

PROBE_AFTER = 5.0  # seconds a partition's position may stand still before the broker is asked for what follows
PROBE_MAX = 30.0  # longest wait between probes of a partition that has nothing new

Key = tuple[str, int]  # (stream, partition)


class Positions:
    def __init__(self, streams: Iterable[str], probe_after: float = PROBE_AFTER, probe_max: float = PROBE_MAX) -> None:
        self.gates = {stream: OffsetGate() for stream in streams}
        self.durable: dict[Key, int] = {}  # delivered to the changelog: may be committed to the group
        self.committed: dict[Key, int] = {}
        self._probe_after, self._probe_max = probe_after, probe_max
        self._moved: dict[Key, float] = {}  # when the position last moved or was probed
        self._wait: dict[Key, float] = {}  # seconds of standing still before the next probe
        self._probed: dict[Key, int] = {}  # the position at which a probe last found records

    def current(self) -> Iterator[tuple[str, int, int]]:
        """(stream, partition, next offset to apply) of every open partition."""
        for stream, gate in self.gates.items():
            for p, position in list(gate.next.items()):
                yield stream, p, position

    def open(self, stream: str, partition: int, position: int, now: float) -> None:
        self.gates[stream].open(partition, position)
        self._moved[(stream, partition)] = now

    def close_all(self) -> None:
        """An assignment is changing: nothing is applied until it settles (the gates reopen from state)."""
        for gate in self.gates.values():
            gate.close(list(gate.next))

    def keep(self, partitions: set[int]) -> None:
        """Only these partitions stay: the others' gates close and their positions are forgotten."""
        for gate in self.gates.values():
            gate.close(set(gate.next) - partitions)
        for table in (self.durable, self.committed):
            for key in [k for k in table if k[1] not in partitions]:
                del table[key]

    def advanced(self, stream: str, partitions: Iterable[int], now: float) -> None:
        """These partitions' positions moved: probing them waits again from now."""
        for p in partitions:
            self._moved[(stream, p)] = now
            self._wait.pop((stream, p), None)

    def state_of(self, partition: int) -> dict[str, int]:
        """Each stream's position of a partition, as kept in state with the batch."""
        return {stream: gate.next[partition] for stream, gate in self.gates.items() if partition in gate.next}

    def stored(self, positions: dict[Key, int]) -> None:
        """Positions the changelog now holds."""
        self.durable.update(positions)

    def to_commit(self) -> dict[Key, int]:
        return {key: pos for key, pos in self.durable.items() if self.committed.get(key) != pos}

    def was_committed(self, positions: dict[Key, int]) -> None:
        self.committed.update(positions)

    def probe_due(self, stream: str, partition: int, now: float) -> bool:
        key = (stream, partition)
        return now - self._moved.get(key, now) >= self._wait.get(key, self._probe_after)

    def waited(self, stream: str, partition: int) -> float:
        """Seconds the partition's position stood still before its last probe was due."""
        return self._wait.get((stream, partition), self._probe_after)

    def probed(self, stream: str, partition: int, position: int, found: bool, now: float) -> bool:
        """A probe at ``position`` is done; True when it found records a probe had found there already (the
        consumer has not delivered them in between: they are to be applied from the broker's read)."""
        key = (stream, partition)
        self._moved[key] = now
        if not found:
            self._wait[key] = min(self._probe_max, 2 * self.waited(stream, partition))
            return False
        if self._probed.get(key) != position:  # new since the last probe: the consumer may be on its way
            self._probed[key] = position
            return False
        return True
