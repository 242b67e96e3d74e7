"""Wiring only: the Faust app, its topics, tables, agents and web views around the pure core.

Data path::

    input topic ──ingest agent──► Segmenter ──► segment-changes, dead letters, users table (changelog)
    erasure topic ──────┘ │  records whose user lives on another partition
                          └──► <app>-events-by-user (keyed by user_id) ──same agent code──► Segmenter
    Segmenter samples ──► <app>-training-samples (1 partition: one trainer per group)
    trainer agent ──► models global table (every worker reads the same snapshot)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import faust
from aiokafka.errors import ConsumerStoppedError
from faust.types import TP

from worker import codec, metrics
from worker.changes import BatchResult, InputRecord, Segmenter
from worker.clustering import ModelSnapshot
from worker.features import wire
from worker.kafkasecurity import aiokafka_config, kafka_python_config
from worker.localstore import LocalStore
from worker.outbox import Outbox, Record
from worker.refetch import RangeReader
from worker.routing import partition_keys, partitioner
from worker.runtime import faust_internals as fi
from worker.runtime import topology
from worker.runtime.positions import Positions
from worker.runtime.records import BY_USER, ERASURES, INPUT, OutputEncoder, input_record
from worker.runtime.recovery import ChangelogReader
from worker.runtime.training import TrainerHost
from worker.segments.rules import load_segment_rules
from worker.settings import Settings
from worker.topics import (
    META_TABLE,
    USERS_TABLE,
    KafkaTopicAdmin,
    TopicWatch,
    worker_topics,
)
from worker.web import views

log = logging.getLogger("worker")

MODEL_KEY = "current"
TAIL_RECORDS = 5000  # model changelog records re-read after Faust's recovery (see worker.runtime.recovery)
TOPIC_CHECK_SECONDS = 10.0  # between checks of the topics' partition counts (worker.topics.TopicWatch)


def _remove_labels(metric: Any, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never set
        metric.remove(*labels)


def create_app(settings: Settings) -> faust.App:
    s = settings
    n = s.partitions
    # custom segments (rules on features), evaluated in the same pass as the personas; their own topic
    segment_rules = load_segment_rules(s.segment_rules, s.half_lives_ms) if s.segment_rules else ()
    topo = topology.build(s, with_memberships=bool(segment_rules))
    app, users, part_meta, models = topo.app, topo.users, topo.part_meta, topo.models
    samples_name = topo.samples_topic
    streams = topo.stream_topics
    partition_of = partitioner(n)
    user_states = wire.EncodedStates(fi.values(users))  # decoded on access
    # the local copy of the per-partition tables (worker.localstore), if configured
    local = LocalStore(Path(s.data_dir) / f"{s.app_id}-state.rocksdb") if s.state_store == "rocksdb" else None
    kept_locally = {t.changelog_topic.get_topic_name(): t.name for t in (users, part_meta)}

    async def send(topic: str, key: bytes | None, value: bytes | None, partition: int | None, headers: Any) -> Any:
        """Hand one record to the producer; returns the delivery future."""
        return await app.producer.send(topic, key, value, partition, None, headers)

    async def put(table: Any, key: str, value: bytes) -> Any:
        return await send(*topo.stage(table, key, value))

    def stored(delivered: list[tuple[Record, Any]]) -> None:
        """States and positions the changelog now holds: into the local copy, with where the changelog has them."""
        if local is not None:
            local.write(
                (kept_locally[topic], meta.partition, meta.offset, key or b"", value)
                for (topic, key, value, _, _), meta in delivered
            )

    outbox = Outbox(
        send,
        on_round=lambda seconds, _records: metrics.OUTBOX_ROUND_SECONDS.observe(seconds),
        on_stored=stored,
    )
    metrics.OUTBOX_PENDING.set_function(lambda: outbox.pending)

    meta_keys = partition_keys(n, "__partition-meta-")
    # The changelog partition of every key in a per-partition table, as the memory store records it for Faust
    # (kept by ``stage`` and the changelog reader): looking it up is much cheaper than the murmur2 partitioner,
    # which the cache does not cover beyond 65k users (a scan of a million took nine seconds).
    users_partition = fi.key_partitions(users)

    def owner_of(uid: str) -> int:
        p = users_partition.get(uid)
        return partition_of(uid) if p is None else p

    segmenter = Segmenter(s, user_states, owner_of, segment_rules=segment_rules)
    encoder = OutputEncoder(topo.outputs, partition_of)
    positions = Positions(streams)  # each owned partition's position per consumed stream (kept in part_meta)
    isolation = "read_committed" if s.processing_guarantee == "exactly_once" else "read_uncommitted"
    kafka_auth = aiokafka_config(s)  # TLS/SASL of the worker's own aiokafka clients (Faust's get broker_credentials)
    # the topic set as planned (``run`` created and checked it before the app started), checked again while running
    topics = TopicWatch(
        worker_topics(s),
        functools.partial(KafkaTopicAdmin, s.bootstrap_servers, kafka_python_config(s)),
        s.app_id,
        topo.outputs.by_user,
        n,
    )
    changelog = ChangelogReader(
        app, s.bootstrap_servers, isolation, local, frozenset((USERS_TABLE, META_TABLE)), **kafka_auth
    )
    filler = RangeReader(s.bootstrap_servers, isolation, **kafka_auth)  # holes in a batch, under the core lock
    prober = RangeReader(s.bootstrap_servers, isolation, **kafka_auth)  # partitions standing still, from the timer
    sampler = RangeReader(s.bootstrap_servers, isolation, **kafka_auth)  # the training samples, for the trainer
    owned: set[int] = set()
    model_bytes: list[bytes | None] = [None]

    def refresh_model() -> bool:
        """Adopt a newer model snapshot; True when it is the first one (users waiting for a persona)."""
        raw = models.get(MODEL_KEY)
        if raw is None or raw is model_bytes[0]:
            return False
        model_bytes[0] = raw
        before = segmenter.model
        snap = ModelSnapshot.from_bytes(raw)
        if not segmenter.set_model(snap):
            return False
        metrics.MODEL_VERSION.set(snap.version)
        metrics.MODEL_PERSONAS.set(len(snap.persona_ids))
        metrics.MODEL_UPDATED.set_to_current_time()
        drift = snap.drift_from(before) if before is not None else None
        if drift is not None:
            metrics.MODEL_DRIFT.set(drift)
        log.info("model v%d in use: %s", snap.version, dict(zip(snap.persona_ids, snap.persona_names, strict=True)))
        if before is None or before.space.half_lives_ms != snap.space.half_lives_ms:
            log.info("time scales: %s", segmenter.time_scales())
        return before is None

    models_recovered = [False]

    @app.task
    async def deliver() -> None:
        try:
            await outbox.run()
        except Exception as exc:  # a write that cannot be delivered: stop before any position is committed past it
            log.exception("delivery failed; stopping the worker")
            await app.crash(exc)

    closing = [False]  # shutdown under way: the timer's broker reads stop with the readers

    @app.on_before_shutdown.connect
    async def close_readers(sender: Any, **kwargs: Any) -> None:
        closing[0] = True
        try:  # what the last batches wrote (a restart would redo it; delivering it saves the redo)
            await asyncio.wait_for(outbox.drain(), timeout=10.0)
        except Exception as exc:
            log.warning("outbox not drained at shutdown: %s", exc)
        await filler.stop()
        await prober.stop()
        await sampler.stop()
        topics.close()
        if local is not None:
            local.close()

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        # The batch in flight finishes and is delivered first: the next owner recovers the partitions from the
        # changelog, and a write of ours landing after its own would put an older user state back. Until the
        # assignment settles no batch is applied (the gates are closed; their records are read again).
        if any(tp.topic == samples_name for tp in revoked):
            # a fit in flight publishes first; whoever trains next resumes from the published model
            await trainer.revoke()
        async with core_lock:
            await outbox.drain()
            await commit_positions()
            positions.close_all()
            # A rebalance may hand back the same partitions, possibly after another member wrote to them: every
            # partition is read again from the changelog, and the indexes rebuilt, on the next batch.
            owned.clear()

    async def catch_up() -> None:
        """Before a batch or a timer's work: take in a changed assignment and a newer model. Users waiting for a
        persona get one when the model is new to them: the first model, or partitions just gained (their users may
        have waited under an owner that never had a model, e.g. one that left before the first was trained)."""
        gained = await refresh_ownership()
        first = refresh_model()
        if segmenter.model is not None and (first or gained):
            await publish(segmenter.sweep(owned if first else gained, time.monotonic()), ())

    async def refresh_ownership() -> set[int]:
        """Re-read what the changelog holds for partitions gained since the last call; returns them."""
        current = assigned()
        if beyond := sorted(p for p in current if p >= n):  # the input has more partitions than the plan
            topics.flag(f"{s.input_topic} partitions {beyond} assigned, beyond {n} (SEGMENT_WORKER_PARTITIONS)")
            return set()
        gained = current - owned
        if current != owned:
            began = time.monotonic()
            owned.intersection_update(current)  # a partition counts as owned once its state is read (see user_view)
            await outbox.drain()  # what the changelog holds includes every write of ours
            for table in (users, part_meta):  # keys of partitions no longer ours go; gained ones are read whole
                fi.drop_partitions(table, current)
                started = time.monotonic()
                from_local, applied = await changelog.read(table, gained)
                log.info(
                    "%s: %d changelog records of partitions %s read in %.1fs%s",
                    table.name,
                    applied,
                    sorted(gained),
                    time.monotonic() - started,
                    f" after {from_local} from the local copy" if local is not None else "",
                )
            if not models_recovered[0]:  # every worker holds the whole (one-partition) model table
                await changelog.read(models, {0}, tail=TAIL_RECORDS)
                models_recovered[0] = True
            metas = {p: codec.loads(raw) for p in current if (raw := part_meta.get(meta_keys[p])) is not None}
            segmenter.rebuild(set(current), {p: int(meta["max_ts"]) for p, meta in metas.items()})
            positions.keep(current)
            for stream, topic in streams.items():
                stored = {p: int(metas[p][stream]) for p in gained if stream in metas.get(p, {})}
                if gained - set(stored):  # never consumed here: from the start of the log
                    stored.update(await filler.beginning(topic, sorted(gained - set(stored))))
                for p, position in stored.items():
                    positions.open(stream, p, position, time.monotonic())
            owned.update(current)
            log.info(
                "owning partitions %s: %d users in state (%.1fs)", sorted(current), len(users), time.monotonic() - began
            )
        return gained

    # One batch at a time through the core and out: the two ingest agents and the timer share user states, and a
    # batch that read a user before another batch's write of that user landed would overwrite it (a lost update).
    core_lock = asyncio.Lock()

    async def handle(stream: str, batch: list[InputRecord]) -> None:
        async with core_lock:
            await handle_locked(stream, batch, [], [])

    def held(stream: str, count: int) -> bool:
        """True (and counted) when records are not to be applied now: the assignment is changing (not ours to
        apply yet, see on_revoked) or a topic is not as planned (they might belong to no member)."""
        if app.rebalancing or not topics.ok:
            metrics.RECORDS_HELD.labels(stream).inc(count)
            return True
        return False

    async def handle_locked(stream: str, batch: list[InputRecord], fetched: list[Any], confirmed: list[Any]) -> None:
        """One batch of a stream through the offset gate, the core and out. ``fetched`` are records read from the
        broker already (``confirmed`` the ranges that read covered); the gate's holes are read here."""
        if held(stream, len(batch) + len(fetched)):
            return
        await catch_up()
        if held(stream, len(batch) + len(fetched)):  # catching up found the assignment beyond the plan
            return
        started = time.perf_counter()
        gate, topic = positions.gates[stream], streams[stream]
        try:
            for p, start, stop in gate.holes(batch):
                records, reached = await filler.read(topic, p, start, stop)
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
            now = time.monotonic()
            batch.extend(
                input_record(stream, r.partition, r.offset, r.key, r.value, r.headers, n, now) for r in fetched
            )
            before = dict(gate.next)
            admitted = gate.admit(batch, confirmed)
            advanced = [p for p, position in gate.next.items() if before.get(p) != position]
            res = segmenter.process(admitted.records, int(time.time() * 1000), now)
            await publish(res, advanced)
        except Exception as exc:
            # not an input problem (those are dead-lettered inside): stop the worker before any offset of
            # this batch is committed, so a restart re-reads it (the offset fence drops what was applied)
            log.exception("batch failed; stopping the worker")
            await app.crash(exc)
            raise
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        positions.advanced(stream, advanced, now)
        metrics.RECORDS_REDELIVERED.labels(stream).inc(admitted.duplicates)
        metrics.RECORDS_HELD.labels(stream).inc(admitted.held)
        metrics.RECORDS_REFETCHED.labels(stream).inc(len(fetched))

    def settled() -> bool:
        """Recovered and not rebalancing: only then is the table whole. Timers run during recovery, and a write
        from a half-recovered table would put an old state back (seen as lost events after a restart)."""
        return bool(app.tables.recovery.completed.is_set() and not app.rebalancing and not app.in_recovery)

    def assigned() -> set[int]:
        return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == s.input_topic}

    def is_ready() -> bool:
        """Joined the group, not rebalancing, and every assigned partition's state read (a member with no partition
        assigned, when there are more members than partitions, is ready: it answers the API by routing)."""
        return not closing[0] and settled() and owned == assigned() and topics.ok

    @app.timer(TOPIC_CHECK_SECONDS)
    async def check_topics() -> None:
        if not closing[0]:
            await topics.check()

    @app.timer(1.0)
    async def housekeeping() -> None:
        metrics.READY.set(1 if is_ready() else 0)
        if closing[0] or not settled() or not topics.ok:
            return
        # a model can arrive while no events flow (the trainer lags the stream): assign waiting users now
        started = time.perf_counter()
        async with core_lock:
            await catch_up()
        try:
            await probe()
        except ConsumerStoppedError:
            if closing[0]:  # the reader was closed under the probe
                return
            raise
        await commit_positions()
        report_positions()
        metrics.HOUSEKEEPING_SECONDS.observe(time.perf_counter() - started)

    reported: set[tuple[str, int]] = set()  # (topic, partition) label values of the per-partition gauges

    def report_positions() -> None:
        """Per owned partition: consumer lag, watermark and its delay behind wall time; the gauges of partitions
        no longer owned are removed (another worker reports them)."""
        now = time.time()
        current: set[tuple[str, int]] = set()
        for stream, p, position in positions.current():
            topic = streams[stream]
            current.add((topic, p))
            end = app.consumer.highwater(TP(topic, p))
            if end is not None:  # known once the consumer fetched from the partition
                metrics.CONSUMER_LAG.labels(topic, str(p)).set(max(0, end - position))
        for p in owned:
            current.add(("", p))
            watermark = segmenter.watermarks.get(p) / 1000
            metrics.WATERMARK.labels(str(p)).set(watermark)
            if watermark > 0:
                metrics.WATERMARK_DELAY.labels(str(p)).set(max(0.0, now - watermark))
        for topic, p in reported - current:
            if topic:
                _remove_labels(metrics.CONSUMER_LAG, topic, str(p))
            else:
                _remove_labels(metrics.WATERMARK, str(p))
                _remove_labels(metrics.WATERMARK_DELAY, str(p))
        reported.clear()
        reported.update(current)
        metrics.PARTITIONS_OWNED.set(len(owned))

    async def commit_positions() -> None:
        """Commit to the consumer group the positions the changelog holds. The group's offsets only say where a
        restarted consumer starts reading (the gate skips what is applied and reads what is missing)."""
        todo = positions.to_commit()
        if not todo:
            return
        try:
            await fi.commit_offsets(app.consumer, {TP(streams[stream], p): pos for (stream, p), pos in todo.items()})
        except Exception as exc:  # a rebalance under way: the next owner commits
            log.info("commit of %s not taken: %s", todo, exc)
            return
        positions.was_committed(todo)

    async def probe() -> None:
        """Ask the broker what follows a position that stood still. Records the consumer dropped and never
        re-delivers show no hole when nothing comes after them (the end of a partition, a restart behind a commit
        that skipped them); here they are found and applied: those a probe saw that the consumer still has not
        delivered by the next probe. Backs off while a partition has nothing new."""
        for stream, p, position in positions.current():
            if not positions.probe_due(stream, p, time.monotonic()):
                continue
            records, reached = await prober.read(streams[stream], p, position, None)
            if positions.probed(stream, p, position, bool(records), time.monotonic()) and settled():
                # seen a probe ago and still not delivered
                tp = TP(streams[stream], p)
                log.info(
                    "%s partition %d: records from offset %d not delivered by the consumer after %.0f s "
                    "(fetching paused for a full buffer: %s, paused: %s); reading them from the broker",
                    stream,
                    p,
                    position,
                    positions.waited(stream, p),
                    *fi.fetching_state(app.consumer, tp),
                )
                fi.resume_fetching(app.consumer, tp)
                async with core_lock:
                    await handle_locked(stream, [], records, [(p, position, reached)])

    async def publish(res: BatchResult, advanced: Iterable[int]) -> None:
        """Queue a batch's writes in the outbox, snapshotted now: its outputs, then its user states, then the
        partitions' positions, each kind delivered before the next is sent (:mod:`worker.outbox`). A user's state
        records the source offset it applied (the fence that drops re-deliveries), so a state that reached the
        changelog before its change record would, after a crash, drop the re-delivered event and never re-emit the
        change (seen in the rebalance test: users with a persona and no change on the topic). A position ahead of
        the states it covers would skip their records after a crash."""
        outputs = encoder.encode(res)
        for d in res.dead:
            r = d.record
            metrics.EVENTS_DEAD_LETTERED.labels(d.reason).inc()
            log.warning(  # the problem, never the record: at most log_max_chars of it
                "dead letter %s at %s/%d/%d: %s",
                d.reason,
                s.erasure_topic if r.kind == "erasure" else s.input_topic,
                r.src_partition,
                r.src_offset,
                d.detail[: s.log_max_chars],
            )
        for _, segment, action, _ in res.memberships:
            metrics.MEMBERSHIPS.labels(segment, action).inc()
        states = [(uid, topo.stage(users, uid, wire.encode(state))) for uid, state in res.dirty.items()]
        states += [(uid, topo.stage(users, uid, None)) for uid in res.erased]  # tombstones: compaction drops the user
        metas = []
        durable_after: dict[tuple[str, int], int] = {}
        for p in res.partitions.union(advanced):
            at = positions.state_of(p)
            durable_after.update({(stream, p): position for stream, position in at.items()})
            meta = {"max_ts": segmenter.watermarks.max_ts.get(p, 0), **at}
            metas.append((p, topo.stage(part_meta, meta_keys[p], codec.dumps(meta))))
        consumed = [consumed_at for _, _, consumed_at in res.changes]
        transitions = res.transitions
        per_topic = Counter(topic for topic, *_ in outputs)
        applied = res.processed

        def outputs_delivered() -> None:
            for topic, count in per_topic.items():
                metrics.OUTPUTS_DELIVERED.labels(topic).inc(count)
            metrics.EVENTS_SETTLED.inc(applied)
            now = time.monotonic()
            for consumed_at in consumed:
                metrics.EVENT_TO_CHANGE.observe(max(0.0, now - consumed_at))
            for before, after in transitions:
                metrics.SEGMENT_CHANGES.labels(before, after).inc()

        def all_delivered() -> None:  # the group may be told these positions now
            positions.stored(durable_after)

        await outbox.add(outputs, states, metas, outputs_delivered, all_delivered)
        metrics.EVENTS_PROCESSED.inc(res.processed)
        metrics.EVENTS_DUPLICATE.inc(res.duplicates)
        metrics.EVENTS_FORWARDED.inc(len(res.forward))
        metrics.ERASURES.inc(res.erasures)
        metrics.CONSENT_WITHDRAWALS.inc(res.withdrawals)
        metrics.EVENTS_EXCLUDED.inc(res.excluded)
        for segment, count in segmenter.counts.items():
            metrics.PERSONA_USERS.labels(segment).set(count)
        metrics.USERS.set(len(users))

    def ingest_agent(stream_name: str, topic: Any, name: str) -> None:
        """The agent of one consumed stream: batches of its records through :func:`handle`."""

        @app.agent(topic, name=name)
        async def ingest(stream: Any) -> None:
            async for events in stream.take_events(s.batch_size, within=s.batch_window):
                now = time.monotonic()
                batch = [
                    input_record(stream_name, m.partition, m.offset, m.key, m.value, m.headers, n, now)
                    for m in (e.message for e in events)
                ]
                await handle(stream_name, batch)

    for stream, agent in ((INPUT, "ingest"), (BY_USER, "ingest-by-user"), (ERASURES, "erasures")):
        ingest_agent(stream, topo.streams[stream], agent)

    # --- the trainer ---------------------------------------------------------------------------------
    # One member of the group trains: the one assigned the single samples partition. Faust's assignment says who;
    # the trainer reads the samples itself from the offset the published model ends at. (Fed by Faust's stream,
    # it saw records fetched before a rebalance after it, and once got nothing at all after one: no first model.)
    samples_tp = TP(samples_name, 0)

    async def newest_model() -> bytes | None:
        await changelog.read(models, {0}, tail=TAIL_RECORDS)  # to the real end: whoever published it
        raw: bytes | None = models.get(MODEL_KEY)
        return raw

    async def publish_model(raw: bytes) -> None:
        await (await put(models, MODEL_KEY, raw))

    async def commit_samples(offset: int) -> None:
        await fi.commit_offsets(app.consumer, {samples_tp: offset})

    trainer = TrainerHost(s, sampler, samples_name, newest_model, publish_model, commit_samples)

    @app.agent(topo.samples, name="samples-assignment")
    async def samples_assignment(stream: Any) -> None:
        """Subscribes the group to the samples topic so that one member is assigned it; the records go unused
        here (the trainer reads them with its own consumer)."""
        async for _ in stream.take_events(1000, within=1.0):
            pass

    @app.task
    async def training() -> None:
        try:
            while not closing[0]:
                fed = False
                if settled() and samples_tp in app.assignor.assigned_actives():
                    fed = await trainer.step()
                if not fed:
                    await asyncio.sleep(0.5)
        except ConsumerStoppedError:
            if not closing[0]:
                raise
        except Exception as exc:
            log.exception("trainer failed; stopping the worker")
            await app.crash(exc)

    # --- HTTP API --------------------------------------------------------------------------------------
    views.register(
        app,
        views.Sources(
            segmenter,
            users,
            user_states,
            owned,
            assigned,
            is_ready,
            lambda: topics.found,
            partition_of,
            s.half_lives_ms,
        ),
    )

    return app
