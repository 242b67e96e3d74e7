"""``segment-worker triggers``: segment changes in, notifications out (Kafka; aiokafka, no Faust).

One consumer group (``<app_id>-triggers``) on the change topic, and, when a campaign has a goal, on the input
topic and the worker's re-routing topic too (co-partitioned by the range assignor: a user's events and changes
are on the same partition number), for conversions. Each member keeps the trigger state
(:class:`worker.triggers.plan.TriggerState`) of the users on its partitions, backed by a compacted topic
``<app_id>-triggers-state`` with the same partitioning: a user's state lives in the partition number of the user's
changes, and a member gaining a partition reads it whole first.

At-least-once, in this order per batch: the notifications are written and acknowledged, then the users' states,
then the group offsets are committed. A crash before the states land makes the changes be read again and the same
notifications (same ``notification_id``) written again: senders dedupe by that id. A change delivered again after
its state landed is recognised by its per-user ``sequence`` and notifies nobody.

A change to no persona (``to_segment`` null: the user was erased or withdrew consent) deletes the user's trigger
state (a tombstone on the state topic) and takes the user out of the campaign counts; nobody is notified.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

from worker import codec
from worker.events.pseudonym import pseudonymizer
from worker.events.timefmt import parse_timestamp
from worker.kafkasecurity import aiokafka_config
from worker.metrics import triggers as metrics
from worker.personas.lifecycle import event_key
from worker.producing import BatchSender, Record
from worker.refetch import RangeReader
from worker.routing import partitioner
from worker.runtime.records import dead_letter_headers
from worker.settings import Settings
from worker.topics import REROUTING, TRIGGERS_STATE, internal_topic, prepare_topics, trigger_topics
from worker.topics import notifications_dlq_topic as dlq_topic
from worker.triggers.effect import Tally
from worker.triggers.operators import persona_notifications
from worker.triggers.personas import PersonaCheck
from worker.triggers.plan import Notification, TriggerState, observe_event, plan
from worker.triggers.rules import Rules
from worker.triggers.webhook import WebhookSink
from worker.web.auth import auth_middleware

log = logging.getLogger("worker.triggers")


@dataclass
class _Batch:
    """What one fetch of changes produces."""

    notifications: list[Notification] = field(default_factory=list)
    dirty: dict[str, int] = field(default_factory=dict)  # users whose trigger state changed -> partition
    gone: dict[str, int] = field(default_factory=dict)  # users who left: their state is deleted
    dead: list[Record] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)  # persona-notification.v1 records (operators)


def state_topic(s: Settings) -> str:
    return internal_topic(s, TRIGGERS_STATE)


BATCH = 1000


class TriggerService:
    def __init__(self, settings: Settings, rules: Rules) -> None:
        self.settings = settings
        self.rules = rules
        self.states: dict[str, TriggerState] = {}
        self.partition_of: dict[str, int] = {}  # user -> partition of the change topic (and of the state topic)
        self.lock = asyncio.Lock()  # one batch at a time; a rebalance waits for the batch in flight
        self.reader = RangeReader(settings.bootstrap_servers, **aiokafka_config(settings))
        self.personas = PersonaCheck(settings, rules, self.reader)
        self.ready = asyncio.Event()
        self.tally = Tally()
        self.goals = {c.goal.event_type for c in rules.campaigns if c.goal is not None}
        self._goal_bytes = tuple(g.encode() for g in self.goals)  # a cheap look before a record is decoded
        self.by_user = internal_topic(settings, REROUTING)  # the worker's topic of re-routed input records
        self.part = partitioner(settings.partitions)
        self.pseudonym = pseudonymizer(settings.pseudonym_key)  # goal events carry raw ids; changes the worker's
        self.sink = WebhookSink.from_settings(
            settings, on_attempt=lambda outcome: metrics.WEBHOOK_ATTEMPTS.labels(outcome).inc()
        )

    async def run(self) -> None:
        s = self.settings
        # every topic read or written, before the group is joined: the state topic has the change topic's
        # partitioning; the input and re-routing topics (goal events) too
        prepare_topics(s, trigger_topics(s, bool(self.goals), bool(self.rules.persona_campaigns)))
        producer = AIOKafkaProducer(
            bootstrap_servers=s.bootstrap_servers, acks="all", linger_ms=5, **aiokafka_config(s)
        )
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers,
            group_id=f"{s.app_id}-triggers",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(s.session_timeout * 1000),
            heartbeat_interval_ms=max(500, int(s.session_timeout * 100)),
            max_poll_interval_ms=max(30_000, int(s.session_timeout * 3000)),
            partition_assignment_strategy=(RangePartitionAssignor,),
            **aiokafka_config(s),
        )
        await producer.start()
        topics = [s.output_topic, *([s.input_topic, self.by_user] if self.goals else [])]
        topics += [s.persona_topic] if self.rules.persona_campaigns else []
        consumer.subscribe(topics, listener=_Listener(self))
        await consumer.start()
        try:
            while True:
                await self.personas.due()
                batches = await consumer.getmany(timeout_ms=500, max_records=BATCH)
                if batches:
                    async with self.lock:
                        await self._handle(consumer, producer, batches)
        finally:
            await consumer.stop()
            await producer.stop()
            await self.reader.stop()
            if self.sink is not None:
                await self.sink.close()

    async def _handle(self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, batches: dict[Any, Any]) -> None:
        """One fetch: changes planned, notifications written (and posted), then the trigger states, then the
        consumed offsets committed."""
        batch = _Batch()
        if self.rules.by_lineage:
            await self.personas.at_least(_newest_model(batches, self.settings.output_topic))
        for tp, records in batches.items():
            if tp.topic == self.settings.persona_topic:
                self._persona_events(tp, records, batch)
                continue
            if tp.topic != self.settings.output_topic:
                self._events(tp, records, batch.dirty)
                continue
            for r in records:
                self._change(tp, r, batch)
        await self._notify(producer, batch)
        await self._store(producer, batch)
        self._report()
        offsets = {tp: records[-1].offset + 1 for tp, records in batches.items() if records}
        try:
            await consumer.commit(offsets)
        except Exception as exc:  # a rebalance under way: the next owner reads these changes again
            log.info("commit not taken: %s", exc)
        metrics.USERS.set(len(self.states))

    def _change(self, tp: TopicPartition, r: Any, batch: _Batch) -> None:
        """One segment change: planned against the user's trigger state, or the user's state deleted when they
        left (erased, consent withdrawn), or dead-lettered when this version cannot read it."""
        try:
            change = codec.loads(r.value)
            uid = change["user_id"]
            if "to_segment" in change and change["to_segment"] is None:
                self._forget(uid)
                batch.dirty.pop(uid, None)
                batch.gone[uid] = tp.partition
                metrics.CHANGES.labels("left").inc()
                return
            batch.gone.pop(uid, None)
            state = self.states.get(uid)
            if state is None:
                state = self.states[uid] = TriggerState()
                self.partition_of[uid] = tp.partition
            result = plan(change, state, self.rules, self.personas.ancestry)
        except Exception as exc:  # not a segment change this version reads: dead-lettered, never a crash
            batch.dead.append(self._invalid(tp, r, exc))
            return
        metrics.CHANGES.labels("duplicate" if result.duplicate else "applied").inc()
        if result.duplicate:
            return
        batch.dirty[uid] = tp.partition
        batch.notifications.extend(result.notifications)
        for e in result.exposures:
            self.tally.exposed(e)
        for campaign, reason in result.skipped:
            metrics.SKIPPED.labels(campaign, reason).inc()

    def _persona_events(self, tp: TopicPartition, records: list[Any], batch: _Batch) -> None:
        """Persona-change events: the operators' alerts of the campaigns that ask for their kind."""
        for r in records:
            try:
                batch.alerts.extend(persona_notifications(codec.loads(r.value), self.rules))
            except Exception as exc:  # not a persona event this version reads: dead-lettered, never a crash
                batch.dead.append(self._invalid(tp, r, exc, "invalid_persona_event", "a persona-change event"))

    def _invalid(
        self, tp: TopicPartition, r: Any, exc: Exception, reason: str = "invalid_change", what: str = "a segment change"
    ) -> Record:
        metrics.CHANGES.labels("invalid").inc()
        detail = f"{type(exc).__name__}: {exc}"[:200]
        log.warning(  # the problem, never the record: at most log_max_chars of it
            "%s/%d/%d: not %s: %s",
            tp.topic,
            tp.partition,
            r.offset,
            what,
            detail[: self.settings.log_max_chars],
        )
        headers = dead_letter_headers(reason, detail, tp.topic, tp.partition, r.offset)
        return (dlq_topic(self.settings), r.key, r.value or b"", None, headers)

    async def _notify(self, producer: AIOKafkaProducer, batch: _Batch) -> None:
        """The notifications (and dead letters) written; treated ones posted to the webhook, if any, before the
        states that say they were planned."""
        s = self.settings
        written: list[Record] = [
            (s.notifications_topic, n.user_id.encode(), codec.dumps(n.to_record()), None, None)
            for n in batch.notifications
        ]
        written += [
            (s.persona_notifications_topic, event_key(a).encode(), codec.dumps(a), None, None) for a in batch.alerts
        ]
        await _send_all(producer, [*written, *batch.dead])
        for n in batch.notifications:  # counted once written
            metrics.NOTIFICATIONS.labels(n.campaign, "holdout" if n.holdout else "treated").inc()
        for a in batch.alerts:
            metrics.PERSONA_NOTIFICATIONS.labels(a["campaign"], a["kind"]).inc()
        if self.sink is None:
            return
        posted = [n.to_record() for n in batch.notifications if not n.holdout] + batch.alerts
        outcomes = await self.sink.deliver(posted)
        failed = [o for o in outcomes if not o.delivered]
        await _send_all(
            producer,
            (
                (
                    dlq_topic(s),
                    (o.record.get("user_id") or event_key(o.record)).encode(),
                    codec.dumps(o.record),
                    None,
                    [("webhook.error", o.error.encode()), ("webhook.attempts", str(o.attempts).encode())],
                )
                for o in failed
            ),
        )
        metrics.DEAD_LETTERED.inc(len(failed))
        for o in failed:
            log.warning(
                "webhook: %s not delivered after %d attempts: %s", o.record["notification_id"], o.attempts, o.error
            )

    async def _store(self, producer: AIOKafkaProducer, batch: _Batch) -> None:
        """The touched users' trigger states, and tombstones for those who left."""
        topic = state_topic(self.settings)
        states: list[Record] = [
            (topic, uid.encode(), codec.dumps(self.states[uid].to_fields()), p, None) for uid, p in batch.dirty.items()
        ]
        tombstones: list[Record] = [(topic, uid.encode(), None, p, None) for uid, p in batch.gone.items()]
        await _send_all(producer, [*states, *tombstones])

    def _events(self, tp: TopicPartition, records: list[Any], dirty: dict[str, int]) -> None:
        """User events: goal events convert exposures. An input record on another partition than its user's is
        skipped here and read from the re-routing topic, where the worker puts it on the right one."""
        for r in records:
            if not r.value or not any(g in r.value for g in self._goal_bytes):
                continue
            try:
                doc = codec.loads(r.value)
                uid, event_type, t = doc["user_id"], doc["event_type"], parse_timestamp(doc["timestamp"])
                uid = self.pseudonym(uid)
            except Exception:  # the worker dead-letters bad input; nothing to count here
                continue
            if event_type not in self.goals or (
                tp.topic == self.settings.input_topic and self.part(uid) != tp.partition
            ):
                continue
            metrics.GOAL_EVENTS.inc()
            state = self.states.get(uid)
            if state is None:
                state = self.states[uid] = TriggerState()
                self.partition_of[uid] = tp.partition
            for e in observe_event(state, event_type, t, self.goals):
                self.tally.converted(e)
            dirty[uid] = tp.partition

    def _forget(self, uid: str) -> None:
        state = self.states.pop(uid, None)
        if state is not None:
            self.tally.add(state.outcomes, -1)
        self.partition_of.pop(uid, None)

    def _report(self) -> None:
        for (campaign, persona, holdout), cell in self.tally.cells.items():
            group = "holdout" if holdout else "treated"
            metrics.CAMPAIGN_USERS.labels(campaign, persona, group).set(cell.exposed)
            metrics.CAMPAIGN_CONVERSIONS.labels(campaign, persona, group).set(cell.converted)
        metrics.USERS.set(len(self.states))

    def campaigns(self) -> list[dict[str, Any]]:
        """The ``/campaigns`` table: per campaign and persona, treated vs holdout, conversion rates, uplift."""
        return [e.to_json() for e in self.tally.effects()]

    async def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        """Read the state of the users of the partitions assigned. Under the batch lock: aiokafka may already hand
        out records of these partitions while this runs, and a batch applied before its users' states are read
        would start them afresh (the restart test caught notifications past a daily cap)."""
        gained = sorted({tp.partition for tp in partitions if tp.topic == self.settings.output_topic})
        async with self.lock:
            for p in gained:
                for r in await self.reader.read_to_end(state_topic(self.settings), p):
                    uid = (r.key or b"").decode()
                    if r.value is None:
                        self._forget(uid)
                    else:
                        old = self.states.get(uid)
                        if old is not None:
                            self.tally.add(old.outcomes, -1)
                        state = self.states[uid] = TriggerState.from_fields(codec.loads(r.value))
                        self.tally.add(state.outcomes)
                        self.partition_of[uid] = p
            self._report()
        log.info("owning change partitions %s: %d users with trigger state", gained, len(self.states))
        metrics.USERS.set(len(self.states))
        self.ready.set()

    async def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        lost = {tp.partition for tp in partitions if tp.topic == self.settings.output_topic}
        async with self.lock:  # the batch in flight is written and committed first
            for uid in [u for u, p in self.partition_of.items() if p in lost]:
                self._forget(uid)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, service: TriggerService) -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.service.revoked(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.service.assigned(assigned)


async def _send_all(producer: AIOKafkaProducer, records: Iterable[Record]) -> None:
    """Send and wait until every record is acknowledged (a ``None`` value is a tombstone)."""
    await BatchSender(lambda: producer)(list(records))


def serve(settings: Settings, rules: Rules) -> None:
    """Run the service until SIGTERM or SIGINT; ``/metrics`` and ``/campaigns`` on ``triggers_web_port``."""
    import signal

    from aiohttp import web
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    logging.basicConfig(
        level=settings.log_level.upper(), format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
    )
    service = TriggerService(settings, rules)

    async def metrics_view(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.REGISTRY), content_type=CONTENT_TYPE_LATEST.split(";")[0], charset="utf-8"
        )

    async def campaigns_view(request: web.Request) -> web.Response:
        return web.Response(body=codec.dumps({"campaigns": service.campaigns()}), content_type="application/json")

    async def main() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)  # type: ignore[union-attr]
        app = web.Application(
            middlewares=[auth_middleware(settings.api_token, settings.api_open_paths)] if settings.api_token else []
        )
        app.router.add_get("/metrics", metrics_view)
        app.router.add_get("/campaigns", campaigns_view)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, settings.web_host, settings.triggers_web_port).start()
        try:
            await service.run()
        except asyncio.CancelledError:
            log.info("stopped")
        finally:
            await runner.cleanup()

    asyncio.run(main())


def _newest_model(batches: dict[Any, Any], changes_topic: str) -> int:
    """The newest model version the fetch's segment changes name (0 when none does)."""
    newest = 0
    for tp, records in batches.items():
        if tp.topic == changes_topic:
            for r in records:
                with contextlib.suppress(Exception):  # an unreadable record is dead-lettered when planned
                    newest = max(newest, int(codec.loads(r.value).get("model_version") or 0))
    return newest
