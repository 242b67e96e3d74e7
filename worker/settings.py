"""The one frozen settings object.

Read once at start-up from the environment (prefix ``SEGMENT_WORKER_``) and command-line flags; nothing else in
the package reads ``os.environ``. Every field ``foo_bar`` is set by ``SEGMENT_WORKER_FOO_BAR`` or ``--foo-bar``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from worker.errors import ConfigError

ENV_PREFIX = "SEGMENT_WORKER_"
DAY_MS = 86_400_000
# the half-lives (days) the state is kept under until a model learns the stream's own, when the operator sets none
PROVISIONAL_HALF_LIVES_DAYS = (1.0, 7.0)


@dataclass(frozen=True)
class Settings:
    # --- Kafka and the process -----------------------------------------------------------------------
    broker: str = field(default="kafka://localhost:9092", metadata={"help": "kafka://host:port[,host:port]"})
    app_id: str = field(default="segment-worker", metadata={"help": "consumer group id and internal topic prefix"})
    web_host: str = field(default="0.0.0.0", metadata={"help": "bind address of the HTTP API"})
    web_port: int = field(default=6066, metadata={"help": "port of the HTTP API (/metrics, /users, /personas)"})
    api_token: str = field(
        default="",
        metadata={"help": "when set, the HTTP APIs need 'Authorization: Bearer <token>' (but API_OPEN_PATHS)"},
    )
    api_open_paths: tuple[str, ...] = field(
        default=("/metrics", "/healthz", "/readyz"),
        metadata={"help": "paths answered without the token (comma list; empty: every path needs it)"},
    )
    web_url: str = field(
        default="",
        metadata={
            "help": "URL at which the other workers reach this one's HTTP API (/users/{id} is answered by the "
            "user's owner); default http://<hostname>:<web_port>"
        },
    )
    data_dir: str = field(default="./data", metadata={"help": "local state directory"})
    state_store: Literal["memory", "rocksdb"] = field(
        default="memory",
        metadata={
            "help": "rocksdb keeps a local copy of the state under data_dir: a restart reads only the changelog "
            "written since (needs the rocksdb extra)"
        },
    )
    input_topic: str = field(default="user-events", metadata={"help": "topic of user events"})
    erasure_topic: str = field(
        default="user-erasures", metadata={"help": "topic of erasure requests (erasure-request.v1; same partitions)"}
    )
    pseudonym_key: str = field(
        default="",
        metadata={
            "help": "when set, user ids are replaced at ingest by their HMAC-SHA256 under this secret (32 hex "
            "digits): state and outputs never hold a raw id"
        },
    )
    output_topic: str = field(default="segment-changes", metadata={"help": "topic of segment-change events"})
    dlq_topic: str = field(default="user-events-dlq", metadata={"help": "dead-letter topic for bad input"})
    persona_topic: str = field(
        default="persona-changes",
        metadata={"help": "topic of persona lifecycle events (emerged, split, merged, retired, drifted, renamed)"},
    )
    segment_rules: str = field(
        default="", metadata={"help": "custom segments file (YAML: segments: {name: condition}); empty: none"}
    )
    membership_topic: str = field(
        default="segment-memberships", metadata={"help": "topic of custom segment entered/exited events"}
    )
    notifications_topic: str = field(
        default="notifications", metadata={"help": "triggers: topic of notification records"}
    )
    persona_notifications_topic: str = field(
        default="persona-notifications",
        metadata={"help": "triggers: topic of operators' alerts on persona events (when: {persona_event: ...})"},
    )
    trigger_rules: str = field(default="", metadata={"help": "triggers: the rules file (YAML)"})
    triggers_web_port: int = field(default=6068, metadata={"help": "triggers: port of its /metrics"})
    webhook_url: str = field(
        default="", metadata={"help": "triggers: also POST each treated notification here (JSON); empty: none"}
    )
    webhook_max_attempts: int = field(default=5, metadata={"help": "triggers: attempts per webhook delivery"})
    webhook_backoff: float = field(default=0.5, metadata={"help": "triggers: first retry delay, seconds (doubles)"})
    webhook_timeout: float = field(default=5.0, metadata={"help": "triggers: timeout of one webhook request, s"})
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = field(
        default="PLAINTEXT", metadata={"help": "how every Kafka client connects to the broker"}
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = field(
        default="PLAIN", metadata={"help": "SASL mechanism (with SASL_PLAINTEXT or SASL_SSL)"}
    )
    sasl_username: str = field(default="", metadata={"help": "SASL user name"})
    sasl_password: str = field(default="", metadata={"help": "SASL password"})
    ssl_cafile: str = field(
        default="", metadata={"help": "CA bundle that signs the broker's certificate (PEM); empty: the system's"}
    )
    ssl_certfile: str = field(default="", metadata={"help": "client certificate (PEM), for brokers that ask for one"})
    ssl_keyfile: str = field(default="", metadata={"help": "the client certificate's private key (PEM)"})
    ssl_check_hostname: bool = field(default=True, metadata={"help": "check the broker's certificate names its host"})
    partitions: int = field(default=8, metadata={"help": "partitions of the input, internal and state topics"})
    replication_factor: int = field(default=1, metadata={"help": "replication of topics the worker creates"})
    processing_guarantee: Literal["at_least_once", "exactly_once"] = field(
        default="at_least_once",
        metadata={"help": "exactly_once needs a broker with transactions (Apache Kafka)"},
    )
    session_timeout: float = field(default=10.0, metadata={"help": "consumer group session timeout, seconds"})
    log_level: str = field(default="info", metadata={"help": "crit, error, warn, info or debug"})
    event_loop: Literal["auto", "uvloop", "asyncio"] = field(
        default="auto",
        metadata={"help": "the worker's event loop; auto: uvloop when installed (the uvloop extra), else asyncio"},
    )
    log_max_chars: int = field(
        default=120, metadata={"help": "longest excerpt of an input record's problem a log line may carry"}
    )
    # --- ingest --------------------------------------------------------------------------------------
    batch_size: int = field(default=4000, metadata={"help": "events taken per processing batch (at most)"})
    batch_window: float = field(
        default=0.05, metadata={"help": "seconds a fetch may wait for more to fill a batch, from when it was asked for"}
    )
    fetch_max_wait_ms: int = field(
        default=100,
        metadata={
            "help": "longest the broker may hold a fetch of the consumed topics waiting for records (a broker that "
            "answers only when it ends adds up to this to every event's latency; shorter costs empty fetches when idle)"
        },
    )
    blas_threads: int = field(
        default=1,
        metadata={
            "help": "threads numpy's BLAS may use in the worker process (the trainer's fits): more take cores from "
            "the event loop, and every event's latency with them; 0: the library's own (one per core)"
        },
    )
    trainer_process: bool = field(
        default=True,
        metadata={
            "help": "the trainer's fits run in a child process (about 100 MB, exits with the worker) instead of a "
            "thread of the worker, which shares its interpreter lock with ingest and the consumer: on two cores "
            "the thread doubled event->change p99; false saves the memory and ~1.4 s of start-up CPU"
        },
    )
    trainer_nice: int = field(
        default=10,
        metadata={
            "help": "niceness added to the fitting process (0-19): on a busy machine its fits yield the cores to "
            "the event loop, whose events wait for every slice the fits take; 0 competes as an equal"
        },
    )
    state_cache_users: int = field(
        default=25_000,
        metadata={
            "help": "users whose state is kept decoded between batches (about 3 kB each; the table keeps every "
            "state encoded, a tenth of that, and a batch decodes the users it touches that are not kept); 0: none"
        },
    )
    state_write_interval: float = field(
        default=1.0,
        metadata={
            "help": "seconds between writes of the user states and positions to the changelog: a user's state is "
            "written once per interval however many of its events came (segment changes go out at once); a crash "
            "re-applies up to this much of the stream (the offset fence keeps counts right; changes come again "
            "with the same ids); also written when state_cache_users users wait; a newly published model is adopted "
            "with this write (at most 1 s later); 0: after every batch"
        },
    )
    max_event_bytes: int = field(default=65_536, metadata={"help": "larger records are dead-lettered"})
    max_future_seconds: float = field(
        default=86_400.0,
        metadata={"help": "events timestamped further than this beyond the wall clock are dead-lettered"},
    )
    # --- features ------------------------------------------------------------------------------------
    half_lives_days: tuple[float, ...] | None = field(
        default=None,
        metadata={
            "help": "half-lives of the decayed rates, days (comma list); unset: learned from the stream's rhythm "
            "by the first model (1,7 until then)"
        },
    )
    max_types_per_user: int = field(default=12, metadata={"help": "event types tracked per user; rest is 'other'"})
    vocabulary_size: int = field(default=8, metadata={"help": "event types the model uses (top-N of the stream)"})
    session_gap_seconds: float = field(default=1800.0, metadata={"help": "inactivity that ends a session"})
    lateness_seconds: float = field(
        default=3600.0, metadata={"help": "watermark = newest event time of a partition minus this"}
    )
    # --- model ---------------------------------------------------------------------------------------
    k_min: int = field(default=2, metadata={"help": "fewest personas the model may find"})
    k_max: int = field(default=10, metadata={"help": "most personas the model may find"})
    warmup_samples: int = field(default=1500, metadata={"help": "samples before the first model is fitted"})
    sample_rate: float = field(default=0.1, metadata={"help": "share of evaluations sent to the trainer"})
    model: Literal["minibatch", "kmeans", "streamkmeans", "clustream", "dbstream", "denstream"] = field(
        default="minibatch", metadata={"help": "online clusterer (see docs/model-choice.md)"}
    )
    model_memory: int = field(default=5000, metadata={"help": "minibatch: samples a centroid remembers"})
    model_halflife: float = field(default=0.01, metadata={"help": "kmeans: River KMeans step towards each sample"})
    publish_every: int = field(default=2000, metadata={"help": "trainer publishes a model every N samples"})
    recheck_every: int = field(default=1_000, metadata={"help": "samples between re-choosing the persona count"})
    recheck_gain: float = field(
        default=0.05, metadata={"help": "silhouette gain another persona count needs to replace the current one"}
    )
    new_persona_distance: float = field(
        default=1.5, metadata={"help": "centroid shift (scaled units) beyond which a cluster gets a new id"}
    )
    persona_drift_distance: float = field(
        default=2.5,
        metadata={"help": "centroid shift (scaled units) since a persona was last announced that makes it `drifted`"},
    )
    model_seed: int = field(default=7, metadata={"help": "seed of the model fits"})
    persona_names_file: str = field(default="", metadata={"help": "TOML/JSON file: persona id -> name"})
    # --- hysteresis and silence ----------------------------------------------------------------------
    min_events: int = field(default=3, metadata={"help": "events before a user's first persona"})
    confirmations: int = field(default=2, metadata={"help": "consecutive evaluations a move must hold"})
    min_margin: float = field(default=0.05, metadata={"help": "assignment margin a move needs, 0..1"})
    dormant_after_days: float | None = field(
        default=None,
        metadata={
            "help": "one silence (days) that moves every user to 'dormant', instead of each user's own rhythm "
            "(DORMANT_AFTER_GAPS); 0: nobody goes dormant"
        },
    )
    dormant_after_gaps: float = field(
        default=8.0,
        metadata={"help": "silence, in the user's usual gaps between events, that moves the user to 'dormant'"},
    )
    dormant_min_days: float = field(default=7.0, metadata={"help": "no user goes dormant after less silence"})
    lapsing_share: float = field(
        default=0.75,
        metadata={"help": "share of the silence that makes a user dormant after which they are 'lapsing'; 0: none"},
    )
    user_history: int = field(
        default=3,
        metadata={"help": "segment changes (with their top reasons) kept per user for /users/{id}; 0 keeps none"},
    )
    silence_checks_days: tuple[float, ...] = field(
        default=(),
        metadata={
            "help": "silences (days) after which a user is re-evaluated by the model, below the dormancy "
            "threshold (comma list; empty = dormancy only)"
        },
    )

    def __post_init__(self) -> None:
        problems = []
        if not self.broker.startswith("kafka://"):
            problems.append("broker must look like kafka://host:port[,host:port]")
        if self.partitions < 1:
            problems.append("partitions must be >= 1")
        if not 1 <= self.k_min <= self.k_max:
            problems.append("need 1 <= k_min <= k_max")
        if self.half_lives_days is not None and (not self.half_lives_days or min(self.half_lives_days) <= 0):
            problems.append("half_lives_days must be positive")
        if not 0.0 < self.sample_rate <= 1.0:
            problems.append("sample_rate must be in (0, 1]")
        if self.warmup_samples < 10 * self.k_max:
            problems.append("warmup_samples must be at least 10 * k_max")
        if self.dormant_after_gaps <= 0 or self.dormant_min_days < 0 or (self.dormant_after_days or 0) < 0:
            problems.append("dormant_after_gaps must be > 0, dormant_min_days and dormant_after_days >= 0")
        if not 0.0 <= self.lapsing_share < 1.0:
            problems.append("lapsing_share must be in [0, 1)")
        if self.user_history < 0:
            problems.append("user_history must be >= 0")
        if self.confirmations < 1 or self.min_events < 1:
            problems.append("confirmations and min_events must be >= 1")
        if self.security_protocol.startswith("SASL") and not (self.sasl_username and self.sasl_password):
            problems.append(f"security_protocol {self.security_protocol} needs sasl_username and sasl_password")
        if self.ssl_keyfile and not self.ssl_certfile:
            problems.append("ssl_keyfile needs ssl_certfile")
        if self.log_max_chars < 0:
            problems.append("log_max_chars must be >= 0")
        if self.blas_threads < 0:
            problems.append("blas_threads must be >= 0")
        if not 0 <= self.trainer_nice <= 19:
            problems.append("trainer_nice must be within 0..19")
        if min(self.fetch_max_wait_ms, self.batch_window, self.state_cache_users, self.state_write_interval) < 0:
            problems.append("fetch_max_wait_ms, batch_window, state_cache_users, state_write_interval must be >= 0")
        if self.batch_size < 1:
            problems.append("batch_size must be >= 1")
        if problems:
            raise ConfigError("invalid settings: " + "; ".join(problems))

    # --- derived values ------------------------------------------------------------------------------
    @property
    def broker_hosts(self) -> list[str]:
        return [h for h in self.broker.removeprefix("kafka://").split(",") if h]

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(self.broker_hosts)

    @property
    def half_lives_ms(self) -> tuple[float, ...]:
        """The operator's half-lives, or the provisional ones the state is kept under until a model learns the
        stream's (worker.features.timescale)."""
        return tuple(h * DAY_MS for h in (self.half_lives_days or PROVISIONAL_HALF_LIVES_DAYS))

    @property
    def learn_half_lives(self) -> bool:
        return self.half_lives_days is None

    @property
    def dormant_after_ms(self) -> int | None:
        """The operator's one dormancy silence for every user; None: each user's own (worker.changes.dormancy)."""
        return None if self.dormant_after_days is None else int(self.dormant_after_days * DAY_MS)

    @property
    def silence_checks_ms(self) -> tuple[int, ...]:
        return tuple(sorted(int(d * DAY_MS) for d in self.silence_checks_days if d > 0))

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    # --- loading -------------------------------------------------------------------------------------
    @classmethod
    def load(cls, environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None) -> Settings:
        """Build settings from ``SEGMENT_WORKER_*`` variables, then ``overrides`` (flags) on top."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _coerce(f.name, field_type(f.name), raw)
        for name, value in (overrides or {}).items():
            if value is None:
                continue
            if name not in _FIELD_NAMES:
                raise ConfigError(f"unknown setting {name!r}")
            values[name] = _coerce(name, field_type(name), value) if isinstance(value, str) else value
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings (used to start worker processes)."""
        env = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:  # unset: the default
                continue
            text = ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)
            env[ENV_PREFIX + f.name.upper()] = text
        return env


_FIELD_NAMES = {f.name for f in fields(Settings)}
_HINTS = typing.get_type_hints(Settings)


def field_type(name: str) -> Any:
    return _HINTS[name]


def _coerce(name: str, tp: Any, raw: str) -> Any:
    try:
        origin = typing.get_origin(tp)
        if origin is Literal:
            if raw not in typing.get_args(tp):
                raise ValueError(f"expected one of {', '.join(typing.get_args(tp))}")
            return raw
        if origin is tuple:
            (item,) = {a for a in typing.get_args(tp) if a is not Ellipsis}
            return tuple(item(part.strip()) for part in raw.split(",") if part.strip())
        if tp is bool:
            return raw.strip().lower() in ("1", "true", "yes", "on")
        if tp in (int, float, str):
            return tp(raw)
        if isinstance(tp, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            return _coerce(name, args[0], raw) if len(args) == 1 else raw
    except ValueError as exc:
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}={raw!r}: {exc}") from exc
    raise ConfigError(f"cannot parse setting {name} of type {tp}")
