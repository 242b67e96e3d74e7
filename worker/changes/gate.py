"""The offset gate: each record of a partition applied once, in offset order, whatever the consumer delivers.

The worker keeps, per consumed partition, the offset of the next record to apply, in its own state (written after
the batch's outputs and user states). That position, not the consumer group's committed offset, says what has been
applied: Faust's consumer can drop a fetched record during a rebalance and still commit past it, re-deliver older
records after a seek, or deliver records of a partition this worker no longer owns. The gate turns any of that
into the exact sequence:

- a record before the position is a re-delivery: skipped;
- a record after the position means records in between never arrived: :meth:`OffsetGate.holes` names the ranges,
  the caller reads them from the broker itself, and :meth:`OffsetGate.admit` takes the fetched records together
  with the batch. A range the broker read confirmed may have real gaps (compaction, transaction markers); an
  unconfirmed range holds the rest of that partition back, to be read again later from the position;
- a record of a partition the gate does not hold is not this worker's to apply.

Pure logic: no Faust, no broker.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from worker.changes.segmenter import InputRecord

# (partition, start, stop): offsets start..stop-1 of a partition
Range = tuple[int, int, int]


@dataclass(slots=True)
class Admission:
    records: list[InputRecord]  # to apply, in offset order per partition
    duplicates: int = 0  # before the position: applied already
    held: int = 0  # after a range nobody confirmed: not applied now, read again from the position later
    foreign: int = 0  # of partitions the gate does not hold


class OffsetGate:
    def __init__(self) -> None:
        self.next: dict[int, int] = {}  # partition -> offset of the next record to apply

    def open(self, partition: int, next_offset: int) -> None:
        self.next[partition] = next_offset

    def close(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self.next.pop(p, None)

    def holes(self, records: Iterable[InputRecord]) -> list[Range]:
        """Ranges of offsets that should have come before a record of this batch and did not."""
        expected = dict(self.next)
        out: list[Range] = []
        for rec in records:
            e = expected.get(rec.partition)
            if e is None or rec.offset < e:
                continue
            if rec.offset > e:
                out.append((rec.partition, e, rec.offset))
            expected[rec.partition] = rec.offset + 1
        return out

    def admit(self, records: Iterable[InputRecord], confirmed: Iterable[Range] = ()) -> Admission:
        """The records to apply, and advance the positions past them.

        ``confirmed`` are ranges read completely from the broker: an offset in one that no record has does not
        exist (compacted away, a transaction marker), so the position may step over it.
        """
        by_partition: dict[int, dict[int, InputRecord]] = {}
        out = Admission([])
        for rec in records:
            if rec.partition not in self.next:
                out.foreign += 1
                continue
            by_offset = by_partition.setdefault(rec.partition, {})
            if rec.offset in by_offset:
                out.duplicates += 1
            else:
                by_offset[rec.offset] = rec
        spans: dict[int, list[tuple[int, int]]] = {}
        for p, start, stop in confirmed:
            spans.setdefault(p, []).append((start, stop))
        for p, by_offset in by_partition.items():
            position = self.next[p]
            offsets = sorted(by_offset)
            for i, offset in enumerate(offsets):
                if offset < position:
                    out.duplicates += 1
                    continue
                if offset > position and not any(a <= position and offset <= b for a, b in spans.get(p, ())):
                    out.held += len(offsets) - i
                    break
                out.records.append(by_offset[offset])
                position = offset + 1
            self.next[p] = position
        return out
