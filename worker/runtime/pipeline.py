"""One batch at a time through the offset gate, the core and the outbox.

The ingest agents, the probe and the timer share user states: a batch that read a user before another batch's
write of that user landed would overwrite it (a lost update), so every batch runs under one lock. Before a batch
the worker catches up: a changed assignment is taken in and a newer model adopted. A batch's outputs are queued in
the outbox at once, snapshotted at the end of the batch; the user states it changed and the partitions' positions
follow once per interval (:mod:`worker.runtime.statewrites`), in the order crash safety needs
(:mod:`worker.outbox`): outputs, then the user states (each holds the offset fence that drops re-deliveries, so a
state landing before its change record would drop the re-delivered event and never re-emit the change), then the
positions (which must not land before the states they cover).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import faust
from faust.types import TP

from worker import metrics
from worker.changes import BatchResult, InputRecord, Segmenter
from worker.clustering import ModelSnapshot
from worker.personas.registry import small_personas
from worker.personas.timeline import Timeline
from worker.producing import Record
from worker.runtime import faust_internals as fi
from worker.runtime.delivery import Deliveries
from worker.runtime.handoff import Fetched
from worker.runtime.modelpin import MODEL_KEY, ModelPin, recorded_version, slot_key
from worker.runtime.ownership import Ownership
from worker.runtime.positions import Positions
from worker.runtime.records import OutputEncoder, input_records
from worker.runtime.statewrites import StateWrites
from worker.runtime.topology import Topology
from worker.settings import Settings
from worker.topics import TopicWatch

log = logging.getLogger("worker")
# the longest a newer model waits for the states' next write while a batch's users wait to be written (see catch_up)
ADOPTION_MAX_WAIT = 1.0


class ModelFollower:
    """Adopts each model snapshot the models table gets (the trainer publishes them there), or the pinned version
    while a restarted worker re-applies what its crashed run applied (:mod:`worker.runtime.modelpin`)."""

    def __init__(self, models: Any, segmenter: Segmenter) -> None:
        self.models, self.segmenter = models, segmenter
        self._raw: bytes | None = None
        self.previous = 0  # the version used before the one adopted last (0: none)
        self._newer_since: float | None = None  # when a newer snapshot than the one in use was first held back

    def kept(self, version: int) -> bool:
        """Whether the models table still holds this version (0: no model, always)."""
        return version == 0 or self._snapshot(version) is not None

    def _snapshot(self, version: int) -> bytes | None:
        for key in (slot_key(version), MODEL_KEY):
            raw = self.models.get(key)
            if raw is not None and ModelSnapshot.version_of(raw) == version:
                return raw  # type: ignore[no-any-return]
        return None

    def refresh(self, pinned: int | None = None, hold: bool = False) -> tuple[bool, bool]:
        """Adopt the pinned version, or else a newer published snapshot; ``hold``: not a newer one yet, unless it
        was held back for :data:`ADOPTION_MAX_WAIT` seconds already (the first model is never held). Returns
        whether a model was adopted and whether it is the first one (users waiting for a persona)."""
        if pinned is None:
            raw = self.models.get(MODEL_KEY)
            if hold and raw is not self._raw and self.segmenter.model is not None and self._held(time.monotonic()):
                return False, False
        elif pinned == 0 or (self.segmenter.model is not None and self.segmenter.model.version == pinned):
            return False, False  # no model yet, or the pinned one in use
        else:
            raw = self._snapshot(pinned)
        if raw is None or raw is self._raw:
            return False, False
        self._raw = raw
        self._newer_since = None
        before = self.segmenter.model
        snap = ModelSnapshot.from_bytes(raw)
        if not self.segmenter.set_model(snap):
            return False, False
        self.previous = before.version if before is not None else 0
        metrics.MODEL_VERSION.set(snap.version)
        metrics.MODEL_PERSONAS.set(len(snap.persona_ids))
        metrics.MODEL_UPDATED.set_to_current_time()
        drift = snap.drift_from(before) if before is not None else None
        if drift is not None:
            metrics.MODEL_DRIFT.set(drift)
        log.info("model v%d in use: %s", snap.version, dict(zip(snap.persona_ids, snap.persona_names, strict=True)))
        if before is None or before.space.half_lives_ms != snap.space.half_lives_ms:
            log.info("time scales: %s", self.segmenter.time_scales())
        return True, before is None

    def _held(self, now: float) -> bool:
        since = self._newer_since
        if since is None:
            self._newer_since = since = now
        return now - since < ADOPTION_MAX_WAIT


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        topo: Topology,
        segmenter: Segmenter,
        positions: Positions,
        ownership: Ownership,
        outbox: Deliveries,
        topics: TopicWatch,
        filler: Any,  # a worker.refetch.RangeReader: the gate's holes, read under the lock
        partition_of: Callable[[str], int],
    ) -> None:
        self.settings, self.topo, self.segmenter, self.positions = settings, topo, segmenter, positions
        self.ownership, self.outbox, self.topics, self.filler = ownership, outbox, topics, filler
        self.app: faust.App = topo.app
        self.model = ModelFollower(topo.models, segmenter)
        self.pin = ModelPin()
        self.encoder = OutputEncoder(topo.outputs, partition_of)
        self.streams = topo.stream_topics
        self.lock = asyncio.Lock()
        self.timeline = Timeline()  # the moves this worker delivered since it started (the personas page)
        self.writes = StateWrites(settings, topo, segmenter, positions)

    async def handle(self, stream: str, batch: list[InputRecord]) -> None:
        async with self.lock:
            await self.handle_locked(stream, batch, [], [])

    async def take(self, fetched: list[Fetched]) -> None:
        """Fetches handed off by the consumer (:mod:`worker.runtime.handoff`): one batch per stream."""
        batches = self.topo.handoff.batches(fetched, fi.generation(self.app), time.monotonic(), self._stale)
        for stream, batch in batches.items():
            await self.handle(stream, batch)
            await asyncio.sleep(0)  # the outbox's sends and acknowledgements, between batches

    @staticmethod
    def _stale(stream: str, count: int) -> None:
        metrics.RECORDS_HELD.labels(stream).inc(count)

    def held(self, stream: str, count: int) -> bool:
        """True (and counted) when records are not to be applied now: the assignment is changing (not ours to
        apply yet, see :meth:`revoke`) or a topic is not as planned (they might belong to no member)."""
        if self.app.rebalancing or not self.topics.ok:
            metrics.RECORDS_HELD.labels(stream).inc(count)
            return True
        return False

    async def handle_locked(
        self, stream: str, batch: list[InputRecord], fetched: list[Any], confirmed: list[Any]
    ) -> None:
        """One batch of a stream through the offset gate, the core and out. ``fetched`` are records read from the
        broker already (``confirmed`` the ranges that read covered); the gate's holes are read here."""
        if self.held(stream, len(batch) + len(fetched)):
            return
        await self.catch_up()
        if self.held(stream, len(batch) + len(fetched)):  # catching up found the assignment beyond the plan
            return
        started = time.perf_counter()
        gate = self.positions.gates[stream]
        try:
            await self._fill_holes(stream, batch, fetched, confirmed)
            now = time.monotonic()
            n = self.settings.partitions
            batch.extend(input_records(stream, fetched, n, now))
            before = dict(gate.next)
            admitted = gate.admit(batch, confirmed)
            advanced = [p for p, position in gate.next.items() if before.get(p) != position]
            res = self.segmenter.process(admitted.records, int(time.time() * 1000), now)
            await self.publish(res, advanced)
        except Exception as exc:
            # not an input problem (those are dead-lettered inside): stop the worker before any offset of
            # this batch is committed, so a restart re-reads it (the offset fence drops what was applied)
            log.exception("batch failed; stopping the worker")
            await self.app.crash(exc)
            raise
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        self.positions.advanced(stream, advanced, now)
        metrics.RECORDS_REDELIVERED.labels(stream).inc(admitted.duplicates)
        metrics.RECORDS_HELD.labels(stream).inc(admitted.held)
        metrics.RECORDS_REFETCHED.labels(stream).inc(len(fetched))

    async def _fill_holes(
        self, stream: str, batch: list[InputRecord], fetched: list[Any], confirmed: list[Any]
    ) -> None:
        """Read from the broker the records the consumer skipped before this batch's records."""
        topic = self.streams[stream]
        for p, start, stop in self.positions.gates[stream].holes(batch):
            records, reached = await self.filler.read(topic, p, start, stop)
            log.warning(
                "%s partition %d: offsets %d..%d skipped by the consumer; %d records read from the broker",
                stream,
                p,
                start,
                stop - 1,
                len(records),
            )
            fetched.extend(records)
            confirmed.append((p, start, reached))

    async def catch_up(self) -> None:
        """Before a batch or a timer's work: take in a changed assignment and a newer model (or, after a restart,
        the model the crashed run used, see :mod:`worker.runtime.modelpin`). Users waiting for a persona get one
        when the model is new to them: the first model, or partitions just gained (their users may have waited
        under an owner that never had a model, e.g. one that left before the first was trained); members of
        personas a model update ended or split are placed again (``Segmenter.sweep``). Decided by the adopted
        version and the users' states alone, so a restart that pins the version re-emits the same changes.

        A newer model waits for the next write of the states batches changed (at most ``state_write_interval``,
        and never more than :data:`ADOPTION_MAX_WAIT`): its record is a sealed write of every state waiting, a
        stall of ~10 µs a state, and adopted when that write is due anyway it costs no write of its own. At
        40,000 events/s the trainer publishes two or three models a second, each a stall of 25-30 ms before."""
        if self.writes.pending and self.ownership.assigned() != self.ownership.owned:
            await self.write()  # under the assignment they were made in (revoke wrote them already, as a rule)
        gained = await self.ownership.refresh()
        if gained and self.segmenter.model is None and not self.pin.active:
            await self._pin(gained)
        released = self.pin.release_reached(self.positions.current())
        if released:
            log.info("records re-applied up to where the logs ended at the start: the newest model may be used")
        adopted, first = self.model.refresh(self.pin.version, hold=not released and self._write_pending())
        if adopted or gained:
            await self._record_model()
        if self.segmenter.model is not None and (adopted or gained):
            # the first model places everyone waiting; any model re-places the members of personas it ended or
            # split since the model used before (all the kept displacements for partitions new to this worker)
            scope = self.ownership.owned if adopted else gained
            since = 0 if first or gained else self.model.previous
            swept = self.segmenter.sweep(scope, time.monotonic(), scope if first else gained, since)
            await self.publish(swept, ())

    def _write_pending(self) -> bool:
        """States and positions wait whose write is not due yet."""
        return self.writes.pending and not self.writes.due(time.monotonic())

    async def _pin(self, gained: set[int]) -> None:
        """A starting worker re-applies its partitions' records under the model their position records name, up
        to where each log ends now (what a crashed run applied lies before that)."""
        metas = self.ownership.metas(gained)
        version = recorded_version(metas.values())
        if version is None:
            return
        if not self.model.kept(version):
            log.warning(
                "model v%d, in use when partitions %s were last written, is no longer kept: records re-applied "
                "from there use the newest model (a change delivered before a crash may come again under it)",
                version,
                sorted(metas),
            )
            return
        until = {}
        for stream, topic in self.streams.items():
            next_offsets = self.positions.gates[stream].next
            for p, end in (await self.filler.ends(topic, sorted(metas))).items():
                if next_offsets.get(p, end) < end:
                    until[(stream, p)] = end
        if until:
            self.pin.hold(version, until)
            log.info("re-applying up to %s under model v%d, the one in use before this start", until, version)

    async def _record_model(self) -> None:
        """Every owned partition's position record names the model in use, delivered before any output of a record
        applied under it (sealed: what the outbox gets later waits for it)."""
        await self.publish(BatchResult(), self.ownership.owned, seal=True)

    async def revoke(self) -> None:
        """Partitions are being revoked: the batch in flight finishes and is delivered first (the next owner
        recovers them from the changelog, and a write of ours landing after its own would put an older user state
        back). Until the assignment settles no batch is applied (the gates are closed; their records are read
        again)."""
        async with self.lock:
            # fetched under the old assignment: read again by whoever owns them next
            for stream, dropped in self.topo.handoff.clear().items():
                self._stale(stream, dropped)
            await self.write()
            await self.outbox.drain()
            await self.commit()
            self.positions.close_all()
            self.ownership.revoked()

    async def commit(self) -> None:
        """Commit to the consumer group the positions the changelog holds. The group's offsets only say where a
        restarted consumer starts reading (the gate skips what is applied and reads what is missing)."""
        todo = self.positions.to_commit()
        if not todo:
            return
        offsets = {TP(self.streams[stream], p): pos for (stream, p), pos in todo.items()}
        try:
            await fi.commit_offsets(self.app.consumer, offsets)
        except Exception as exc:  # a rebalance under way: the next owner commits
            log.info("commit of %s not taken: %s", todo, exc)
            return
        self.positions.was_committed(todo)

    async def publish(self, res: BatchResult, advanced: Iterable[int], seal: bool = False) -> None:
        """Queue a batch's outputs in the outbox, snapshotted now, with the states of the users they are about, and
        all the states and positions waiting when their interval is over (``seal``: whatever the interval, and
        delivered before any later write)."""
        outputs = self.encoder.encode(res)
        self._log_dead_letters(res)
        delivered = _Delivered(outputs, res, self.timeline)
        now = time.monotonic()
        self.writes.note(res.partitions.union(advanced), now)
        if seal or self.writes.due(now):
            states, metas, stored = self.writes.take()
            await self.outbox.add(outputs, states, metas, delivered, stored, seal)
        else:
            await self.outbox.add(outputs, self.writes.with_outputs(res), after_outputs=delivered)
        self._count(res)

    async def write(self) -> None:
        """Queue the waiting states and positions now (the caller holds the lock)."""
        if self.writes.pending:
            states, metas, stored = self.writes.take()
            await self.outbox.add((), states, metas, after_all=stored)

    async def write_due(self) -> None:
        """The waiting states and positions, if their interval is over (a timer's: no batch may come to write
        them)."""
        async with self.lock:
            if self.writes.due(time.monotonic()):
                await self.write()

    async def write_now(self) -> None:
        async with self.lock:
            await self.write()

    def _log_dead_letters(self, res: BatchResult) -> None:
        for d in res.dead:
            r = d.record
            metrics.EVENTS_DEAD_LETTERED.labels(d.reason).inc()
            log.warning(  # the problem, never the record: at most log_max_chars of it
                "dead letter %s at %s/%d/%d: %s",
                d.reason,
                self.settings.erasure_topic if r.kind == "erasure" else self.settings.input_topic,
                r.src_partition,
                r.src_offset,
                d.detail[: self.settings.log_max_chars],
            )

    def _count(self, res: BatchResult) -> None:
        for _, segment, action, _ in res.memberships:
            metrics.MEMBERSHIPS.labels(segment, action).inc()
        metrics.EVENTS_PROCESSED.inc(res.processed)
        metrics.EVENTS_DUPLICATE.inc(res.duplicates)
        metrics.EVENTS_FORWARDED.inc(len(res.forward))
        metrics.ERASURES.inc(res.erasures)
        metrics.CONSENT_WITHDRAWALS.inc(res.withdrawals)
        metrics.EVENTS_EXCLUDED.inc(res.excluded)
        counts = self.segmenter.counts
        for segment, count in counts.items():
            metrics.PERSONA_USERS.labels(segment).set(count)
        if self.segmenter.model is not None:
            metrics.SMALL_PERSONAS.set(small_personas(self.segmenter.model.persona_ids, counts))
        metrics.USERS.set(len(self.topo.users))


class _Delivered:
    """What a batch's delivered outputs are counted as: per topic, events settled, event→change latency and the
    segment transitions, also into the timeline of moves (snapshotted from the batch, called by the outbox once the
    broker has them)."""

    def __init__(self, outputs: list[Record], res: BatchResult, timeline: Timeline) -> None:
        self.timeline = timeline
        self.per_topic = Counter(topic for topic, *_ in outputs)
        self.applied = res.processed
        self.consumed = [consumed_at for _, _, consumed_at in res.changes]
        self.transitions = res.transitions
        self.samples = len(res.samples)

    def __call__(self) -> None:
        for topic, count in self.per_topic.items():
            metrics.OUTPUTS_DELIVERED.labels(topic).inc(count)
        metrics.EVENTS_SETTLED.inc(self.applied)
        metrics.SAMPLES_SENT.inc(self.samples)
        now = time.monotonic()
        for consumed_at in self.consumed:
            metrics.EVENT_TO_CHANGE.observe(max(0.0, now - consumed_at))
        for before, after, _, _ in self.transitions:
            metrics.SEGMENT_CHANGES.labels(before, after).inc()
        self.timeline.add_all(self.transitions)
