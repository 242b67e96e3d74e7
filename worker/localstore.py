"""The worker's local copy of its per-partition tables in RocksDB (``state_store = "rocksdb"``).

A restart, or a partition handed back after a rebalance, then reads the changelog only from where the local copy
ends instead of from its start.

The copy holds exactly what the changelog holds up to an offset, per table partition. Records are written here
only once the broker has acknowledged them (after each delivery round of :mod:`worker.outbox`) or once they were
read from the changelog; never a state whose outputs might still be undelivered, which a restart would take for
done (the state's offset fence would drop the re-delivered event, and its change would never be emitted).

With each partition goes a marker: the next changelog offset and a digest of the record just before it. Recovery
reads the changelog from that record: when it is there with the same content, the copy is a prefix of this
changelog and reading goes on from there; when it is not (the topic was deleted and created again, retention
removed records the copy lacks), the copy is discarded and the partition read in full (see
:mod:`worker.runtime.recovery`).

Layout: one database per worker (RocksDB locks it: two workers cannot share a data directory). Key = table name,
0x00, the partition (4 bytes big-endian), then ``k`` and the record's key as the changelog has it, or ``m`` for the
marker (8-byte offset, 8-byte digest). Writes go through RocksDB's write-ahead log without fsync: a killed process
loses nothing, a machine crash at most the last writes (then the changelog supplies them again).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.errors import SegmentWorkerError

# table, partition, changelog offset, key, value (None: the key was deleted)
Entry = tuple[str, int, int, bytes, bytes | None]


class LocalStoreError(SegmentWorkerError):
    """The local state store cannot be opened or used."""


@dataclass(frozen=True, slots=True)
class Marker:
    next_offset: int  # the first changelog offset the local copy does not hold
    digest: bytes  # of the record at next_offset - 1


def digest(key: bytes | None, value: bytes | None) -> bytes:
    h = hashlib.blake2b(digest_size=8)
    k = key or b""
    h.update(len(k).to_bytes(4, "big"))
    h.update(k)
    h.update(b"\x00" if value is None else b"\x01" + value)
    return h.digest()


def _prefix(table: str, partition: int) -> bytes:
    return table.encode() + b"\x00" + partition.to_bytes(4, "big")


class LocalStore:
    def __init__(self, path: Path) -> None:
        try:
            from rocksdict import Options, Rdict, WriteBatch
        except ImportError as exc:  # an optional dependency
            raise LocalStoreError(
                "state_store=rocksdb needs the rocksdict package: pip install 'segment-worker[rocksdb]'"
            ) from exc
        path.parent.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        try:
            self._db: Any = Rdict(str(path), options)
        except Exception as exc:  # RocksDB's lock (another worker on this directory), permissions, corruption
            raise LocalStoreError(f"cannot open the local state store at {path}: {exc}") from exc
        self._write_batch = WriteBatch
        self.path = path
        self.closed = False

    def marker(self, table: str, partition: int) -> Marker | None:
        raw = self._db.get(_prefix(table, partition) + b"m")
        if raw is None:
            return None
        return Marker(int.from_bytes(raw[:8], "big"), raw[8:])

    def items(self, table: str, partition: int) -> Iterator[tuple[bytes, bytes]]:
        """(changelog key, value) of every key the copy holds for a table partition."""
        prefix = _prefix(table, partition) + b"k"
        skip = len(prefix)
        for key, value in self._db.items(from_key=prefix):
            if not key.startswith(prefix):
                return
            yield key[skip:], value

    def write(self, entries: Iterable[Entry]) -> int:
        """Apply changelog records in offset order (per table partition) atomically, with the partitions'
        markers; returns how many were written. After :meth:`close`, nothing (the copy may lag the changelog)."""
        if self.closed:
            return 0
        batch = self._write_batch(raw_mode=True)
        last: dict[tuple[str, int], tuple[int, bytes, bytes | None]] = {}  # the newest record per partition
        count = 0
        for table, partition, offset, key, value in entries:
            prefix = _prefix(table, partition)
            if value is None:
                batch.delete(prefix + b"k" + key)
            else:
                batch.put(prefix + b"k" + key, value)
            newest = last.get((table, partition))
            if newest is None or offset > newest[0]:
                last[(table, partition)] = (offset, key, value)
            count += 1
        for (table, partition), (offset, key, value) in last.items():
            batch.put(_prefix(table, partition) + b"m", (offset + 1).to_bytes(8, "big") + digest(key, value))
        if count:
            self._db.write(batch)
        return count

    def forget(self, table: str, partition: int) -> None:
        """Discard the copy of a table partition (keys and marker)."""
        prefix = _prefix(table, partition)
        self._db.delete_range(prefix + b"k", prefix + b"n")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._db.close()
