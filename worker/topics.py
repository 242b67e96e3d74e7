"""The topics the worker and the trigger service read and write: what each must look like, creating the missing
ones before any client could auto-create them, and the check that refuses a topic partitioned unlike the plan.

Two partition rules:

- **co-partitioned** (``exact``): the input, erasure, re-routing, change, state and changelog topics have exactly
  ``PARTITIONS`` partitions. A user's events, state and changes live in the partition number the default
  partitioner (murmur2 of the user id) gives for ``PARTITIONS``; the group's assignor hands one member the same
  partition number of each, and the trigger service joins a user's changes with their goal events and trigger
  state by that number. Any other count would send records where no member applies them.
- **any count** (``exact=False``): the dead-letter, membership and notification topics (and the one-partition
  topics: training samples, the model changelog, Faust's leader topic) are written by key with the producer's
  default partitioner, or to partition 0 only: any count of at least one works.

Pure parts (:func:`worker_topics`, :func:`trigger_topics`, :func:`problems`, :func:`create_command`) import no
client; :class:`KafkaTopicAdmin` is the kafka-python side, :func:`ensure_topics` the start-up step and
:class:`TopicWatch` the running check.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from worker import metrics
from worker.errors import BrokerError, TopicError
from worker.kafkasecurity import kafka_python_config
from worker.settings import ENV_PREFIX, Settings

log = logging.getLogger("worker.topics")

SAMPLES_RETENTION = 7 * 86_400.0  # seconds the samples topic keeps a record (user features, never an id)
USERS_TABLE, META_TABLE, MODELS_TABLE = "users", "partition-meta", "models"


@dataclass(frozen=True)
class TopicSpec:
    """One topic of the plan. ``partitions`` is the count the topic is created with; with ``exact`` an existing
    topic must have that count, otherwise any count of at least one works."""

    name: str
    partitions: int
    exact: bool
    role: str
    setting: str  # the setting (environment variable) that names the topic
    compacted: bool = False
    retention: float | None = None  # seconds; None: the broker's default

    @property
    def configs(self) -> dict[str, str]:
        out = {"cleanup.policy": "compact"} if self.compacted else {}
        if self.retention is not None:
            out["retention.ms"] = str(int(self.retention * 1000))
        return out


# internal topics: <APP_ID>-<suffix>
REROUTING = "events-by-user"  # input records re-routed to the partition that owns their user
SAMPLES = "training-samples"
LEADER = "__assignor-__leader"  # Faust's leader election (one partition)
TRIGGERS_STATE = "triggers-state"


def internal_topic(s: Settings, suffix: str) -> str:
    return f"{s.app_id}-{suffix}"


def changelog(s: Settings, table: str) -> str:
    """Faust's name for a table's changelog topic."""
    return internal_topic(s, f"{table}-changelog")


def notifications_dlq_topic(s: Settings) -> str:
    return f"{s.notifications_topic}-dlq"


def _env(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _copartitioned(s: Settings, name: str, role: str, setting: str, compacted: bool = False) -> TopicSpec:
    return TopicSpec(name, s.partitions, True, role, _env(setting), compacted=compacted)


def _any_count(s: Settings, name: str, role: str, setting: str) -> TopicSpec:
    return TopicSpec(name, s.partitions, False, role, _env(setting))


def _single(name: str, role: str, compacted: bool = False, retention: float | None = None) -> TopicSpec:
    return TopicSpec(name, 1, False, role, _env("app_id"), compacted=compacted, retention=retention)


def _persona_topic(s: Settings) -> TopicSpec:
    return _any_count(s, s.persona_topic, "persona lifecycle events (written by the trainer)", "persona_topic")


def worker_topics(s: Settings) -> tuple[TopicSpec, ...]:
    """Every topic ``segment-worker run`` reads or writes."""
    specs = [
        _copartitioned(s, s.input_topic, "user events (read)", "input_topic"),
        _copartitioned(s, s.erasure_topic, "erasure requests (read)", "erasure_topic"),
        _copartitioned(s, internal_topic(s, REROUTING), "input records re-routed to their user's partition", "app_id"),
        _copartitioned(
            s, s.output_topic, "segment changes (written; the trigger service joins by partition)", "output_topic"
        ),
        _copartitioned(s, changelog(s, USERS_TABLE), "user states (changelog)", "app_id", compacted=True),
        _copartitioned(s, changelog(s, META_TABLE), "partition positions (changelog)", "app_id", compacted=True),
        _any_count(s, s.dlq_topic, "dead letters (written by key)", "dlq_topic"),
        _persona_topic(s),
        _single(internal_topic(s, SAMPLES), "training samples (partition 0)", retention=SAMPLES_RETENTION),
        _single(changelog(s, MODELS_TABLE), "model snapshots (changelog, partition 0)", compacted=True),
        _single(internal_topic(s, LEADER), "Faust's leader election"),
    ]
    if s.segment_rules:
        specs.append(
            _any_count(s, s.membership_topic, "custom segment memberships (written by key)", "membership_topic")
        )
    return tuple(specs)


def trigger_topics(s: Settings, goals: bool, persona_events: bool = False) -> tuple[TopicSpec, ...]:
    """Every topic ``segment-worker triggers`` reads or writes (the input and re-routing topics when a campaign
    has a goal; the persona-change topic and the operators' alerts when one alerts on persona events)."""
    specs = [
        _copartitioned(s, s.output_topic, "segment changes (read)", "output_topic"),
        _copartitioned(
            s,
            internal_topic(s, TRIGGERS_STATE),
            "trigger states (same partitioning as the changes)",
            "app_id",
            compacted=True,
        ),
        _any_count(s, s.notifications_topic, "notifications (written by key)", "notifications_topic"),
        _any_count(
            s, notifications_dlq_topic(s), "undeliverable notifications (written by key)", "notifications_topic"
        ),
    ]
    if persona_events:
        specs += [
            _persona_topic(s),
            _any_count(
                s,
                s.persona_notifications_topic,
                "alerts on persona events (written by key)",
                "persona_notifications_topic",
            ),
        ]
    if goals:
        specs += [
            _copartitioned(s, s.input_topic, "goal events (read)", "input_topic"),
            _copartitioned(s, internal_topic(s, REROUTING), "goal events re-routed by the worker (read)", "app_id"),
        ]
    return tuple(specs)


@dataclass(frozen=True)
class Problem:
    spec: TopicSpec
    found: int | None  # partitions found; None: the topic does not exist

    def __str__(self) -> str:
        spec = self.spec
        if self.found is None:
            return f"{spec.name} does not exist or cannot be described ({spec.role}; named by {spec.setting})"
        return (
            f"{spec.name} has {self.found} partition{'s' if self.found != 1 else ''}, expected {spec.partitions} "
            f"({spec.role}; {ENV_PREFIX}PARTITIONS={spec.partitions})"
        )


def problems(specs: Iterable[TopicSpec], found: Mapping[str, int | None]) -> list[Problem]:
    """The topics of ``specs`` that are missing (or unreadable) or, where the count matters, partitioned otherwise."""
    out = []
    for spec in specs:
        count = found.get(spec.name)
        if count is None or count < 1 or (spec.exact and count != spec.partitions):
            out.append(Problem(spec, count if count else None))
    return out


def create_command(spec: TopicSpec, bootstrap: str, replication: int) -> str:
    """The Apache Kafka command that creates ``spec`` as the worker would."""
    configs = "".join(f" --config {k}={v}" for k, v in spec.configs.items())
    return (
        f"kafka-topics.sh --bootstrap-server {bootstrap} --create --topic {spec.name} "
        f"--partitions {spec.partitions} --replication-factor {replication}{configs}"
    )


class TopicAdmin(Protocol):
    def partitions(self, names: Sequence[str]) -> dict[str, int | None]:
        """Partitions of each topic; None for one that does not exist or cannot be described."""
        ...

    def create(self, specs: Sequence[TopicSpec], replication: int) -> tuple[list[str], dict[str, str]]:
        """Create the topics; returns the names created and the broker's error for each it refused (one that
        exists already, made by another client meanwhile, is neither)."""
        ...

    def close(self) -> None: ...


class KafkaTopicAdmin:
    """:class:`TopicAdmin` on kafka-python's admin client. Its metadata requests never auto-create a topic."""

    def __init__(self, bootstrap: str, security: Mapping[str, Any] | None = None) -> None:
        from kafka import KafkaAdminClient

        self._admin = KafkaAdminClient(
            bootstrap_servers=bootstrap, client_id="segment-worker-admin", **(security or {})
        )

    def partitions(self, names: Sequence[str]) -> dict[str, int | None]:
        described = self._admin.describe_topics(list(names)) if names else []
        out: dict[str, int | None] = dict.fromkeys(names)
        for d in described:
            name = d.get("name") or d.get("topic")
            if name in out and not d.get("error_code"):
                out[name] = len(d.get("partitions") or ())
        return out

    def create(self, specs: Sequence[TopicSpec], replication: int) -> tuple[list[str], dict[str, str]]:
        from kafka.errors import for_code

        if not specs:
            return [], {}
        request = {
            spec.name: {"num_partitions": spec.partitions, "replication_factor": replication, "configs": spec.configs}
            for spec in specs
        }
        response = self._admin.create_topics(request, raise_errors=False)
        created, refused = [], {}
        for result in response.get("topics", ()):
            code = result.get("error_code") or 0
            if not code:
                created.append(result["name"])
            elif for_code(code).__name__ != "TopicAlreadyExistsError":  # (that one: raced with another creator)
                refused[result["name"]] = f"{for_code(code).__name__}: {result.get('error_message') or ''}".strip()
        return created, refused

    def waiting(self, group: str, topic: str, partitions: int) -> dict[int, tuple[int, int]]:
        """Per partition of ``topic``: (``group``'s committed position, or the log start if it has none; the
        records after it, as far as the broker's end offset tells)."""
        from kafka import TopicPartition
        from kafka.admin import OffsetSpec

        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = self._admin.list_partition_offsets(dict.fromkeys(tps, OffsetSpec.LATEST))
        starts = self._admin.list_partition_offsets(dict.fromkeys(tps, OffsetSpec.EARLIEST))
        committed = self._admin.list_group_offsets({group: tps}).get(group, {})
        out = {}
        for tp in tps:
            position = max(starts[tp].offset, committed[tp].offset if tp in committed else -1)
            out[tp.partition] = (position, max(0, ends[tp].offset - position))
        return out

    def close(self) -> None:
        self._admin.close()


def ensure_topics(admin: TopicAdmin, specs: Sequence[TopicSpec], replication: int, bootstrap: str) -> list[str]:
    """Create the topics of ``specs`` that do not exist, then check every one; returns the names created. Raises
    :class:`TopicError` naming each topic that is partitioned unlike the plan (before creating anything: nothing is
    made on a broker the worker will not run against) or still missing (creation refused), with what makes it
    right."""
    names = [spec.name for spec in specs]
    found = admin.partitions(names)
    wrong = [p for p in problems(specs, found) if p.found is not None]
    if wrong:
        raise TopicError(_explain(wrong, {}, bootstrap, replication))
    missing = [spec for spec in specs if found.get(spec.name) is None]
    created, refused = admin.create(missing, replication)
    wrong = problems(specs, admin.partitions(names)) if missing else []
    if wrong:
        raise TopicError(_explain(wrong, refused, bootstrap, replication))
    for name in created:
        log.info("created topic %s", name)
    return created


def _explain(wrong: Sequence[Problem], refused: Mapping[str, str], bootstrap: str, replication: int) -> str:
    lines = [f"{len(wrong)} topic{'s' if len(wrong) > 1 else ''} not as the worker needs them:"]
    for problem in wrong:
        spec = problem.spec
        line = f"  - {problem}"
        if spec.name in refused:
            line += f"; the broker refused to create it ({refused[spec.name]})"
        if problem.found is None:
            line += f"\n    create it: {create_command(spec, bootstrap, replication)}"
        else:
            line += (
                f"\n    either set {ENV_PREFIX}PARTITIONS={problem.found} for every topic of this worker, or delete "
                f"{spec.name} and let the worker create it (Kafka cannot reduce a topic's partitions; adding some "
                f"moves users between partitions), or name another topic with {spec.setting}"
            )
        lines.append(line)
    return "\n".join(lines)


class GroupPositions(Protocol):
    def waiting(self, group: str, topic: str, partitions: int) -> dict[int, tuple[int, int]]:
        """Per partition: (the group's committed position, or the log start if none; records after it)."""
        ...


class WatchedAdmin(TopicAdmin, GroupPositions, Protocol):
    pass


class TopicWatch:
    """The topic set while running, checked every few seconds from the worker's timer: a topic that disappears or
    changes its partition count stops the worker applying records (they stay unapplied and uncommitted, and are
    read again once the topics are right or by a worker restarted with the right settings) instead of sending
    them where no member applies them; ``segment_worker_topic_problems`` and the readiness probe say so. It also
    measures the re-routing topic per partition: records after the group's committed position, and for how long
    that position has stood still with records waiting (``segment_worker_rerouted_*``)."""

    def __init__(
        self,
        specs: Sequence[TopicSpec],
        admin: Callable[[], WatchedAdmin],
        group: str,
        rerouted: str,
        partitions: int,
    ) -> None:
        self.specs = specs
        self._new_admin = admin
        self._admin: WatchedAdmin | None = None
        self._group, self._rerouted, self._partitions = group, rerouted, partitions
        self._stalls = StallClock()
        self.problems: list[str] = []
        self._flagged: list[str] = []  # found by the worker itself (an assignment beyond the plan)

    @property
    def ok(self) -> bool:
        return not self.problems and not self._flagged

    @property
    def found(self) -> list[str]:
        """Every problem known now: the last check's and the worker's own."""
        return self.problems + self._flagged

    def flag(self, problem: str) -> None:
        """A problem the worker saw itself; it stays until the topics are checked and found right."""
        if problem not in self._flagged:
            log.error("topic problem: %s; records are not applied until it is mended", problem)
            self._flagged.append(problem)
            metrics.TOPIC_PROBLEMS.set(len(self.found))

    async def check(self) -> None:
        """Describe the topics and the re-routing topic's positions (in a thread: kafka-python blocks); a failed
        description leaves the last finding."""
        try:
            found, waiting = await asyncio.get_running_loop().run_in_executor(None, self._describe)
        except Exception as exc:  # the broker unreachable for a moment: the clients' own errors say so
            log.warning("could not check the topics: %s", exc)
            return
        self.update([str(p) for p in problems(self.specs, found)])
        now = time.monotonic()
        for p, (committed, count) in waiting.items():
            metrics.REROUTED_WAITING.labels(str(p)).set(count)
            metrics.REROUTED_STALLED.labels(str(p)).set(self._stalls.observe(p, committed, count, now))

    def _describe(self) -> tuple[dict[str, int | None], dict[int, tuple[int, int]]]:
        if self._admin is None:
            self._admin = self._new_admin()
        found = self._admin.partitions([spec.name for spec in self.specs])
        if found.get(self._rerouted) != self._partitions:
            return found, {}
        return found, self._admin.waiting(self._group, self._rerouted, self._partitions)

    def update(self, now: list[str]) -> None:
        for problem in now:
            if problem not in self.problems:
                log.error("topic problem: %s; records are not applied until it is mended", problem)
        for problem in self.problems + (self._flagged if not now else []):
            if problem not in now:
                log.info("topic problem mended: %s", problem)
        self.problems = now
        if not now:
            self._flagged = []
        metrics.TOPIC_PROBLEMS.set(len(self.found))

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None


def prepare_topics(s: Settings, specs: Sequence[TopicSpec]) -> list[str]:
    """Every topic of ``specs`` exists as planned before any client joins the group: the missing ones are created
    (a producer or consumer naming one first would have the broker auto-create it with its default partition count,
    or find it missing where auto-creation is off); raises :class:`worker.errors.TopicError` naming each topic that
    cannot be made right. Returns the names created."""
    from kafka.errors import KafkaError

    try:
        admin = KafkaTopicAdmin(s.bootstrap_servers, kafka_python_config(s))
        try:
            return ensure_topics(admin, specs, s.replication_factor, s.bootstrap_servers)
        finally:
            admin.close()
    except KafkaError as exc:
        raise BrokerError(f"cannot check the topics on {s.broker}: {exc}") from exc


class StallClock:
    """Per partition of a consumed topic: for how long records have waited there while the group's committed
    position stood still (a partition no member applies; a member stuck)."""

    def __init__(self) -> None:
        self._since: dict[int, tuple[int, float]] = {}  # partition -> (committed position, waiting since)

    def observe(self, partition: int, committed: int, waiting: int, now: float) -> float:
        """Seconds the records waiting on ``partition`` have waited with its committed position at ``committed``."""
        if waiting <= 0:
            self._since.pop(partition, None)
            return 0.0
        last = self._since.get(partition)
        if last is None or last[0] != committed:
            self._since[partition] = (committed, now)
            return 0.0
        return now - last[1]
