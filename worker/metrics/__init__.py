"""Prometheus metrics of the worker (prometheus-client, default registry with the process collectors)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

disable_created_metrics()  # type: ignore[no-untyped-call]

PREFIX = "segment_worker_"

EVENTS_PROCESSED = Counter(PREFIX + "events_processed", "Valid events applied to user state.")
EVENTS_DEAD_LETTERED = Counter(
    PREFIX + "events_dead_lettered", "Input records sent to the dead-letter topic, by reason.", ["reason"]
)
EVENTS_SETTLED = Counter(
    PREFIX + "events_settled",
    "Valid events applied whose outputs (segment changes, memberships, re-routed records) the broker has acknowledged.",
)
OUTPUTS_DELIVERED = Counter(
    PREFIX + "outputs_delivered", "Output records the broker acknowledged, by topic.", ["topic"]
)
EVENTS_DUPLICATE = Counter(PREFIX + "events_duplicate", "Re-delivered records skipped by the per-user offset fence.")
EVENTS_FORWARDED = Counter(PREFIX + "events_forwarded", "Records re-routed to the partition that owns their user_id.")
SEGMENT_CHANGES = Counter(PREFIX + "segment_changes", "Segment-change events emitted.", ["from_segment", "to_segment"])
MEMBERSHIPS = Counter(
    PREFIX + "memberships", "Custom segment membership events emitted, by segment and action.", ["segment", "action"]
)
ERASURES = Counter(PREFIX + "erasures", "Erasure requests applied: the user's state deleted (whether it had any).")
CONSENT_WITHDRAWALS = Counter(
    PREFIX + "consent_withdrawals", "Events withdrawing consent to segmentation: the user's state became a marker."
)
EVENTS_EXCLUDED = Counter(
    PREFIX + "events_excluded", "Valid events of users without consent to segmentation, not applied."
)
CORE_BUILD = Gauge(
    PREFIX + "core_build",
    "1 for the build of the per-event core this process runs: compiled (mypyc) or python (interpreted).",
    ["build"],
)
PERSONA_USERS = Gauge(PREFIX + "persona_users", "Users per persona on this worker's partitions.", ["segment"])
SMALL_PERSONAS = Gauge(
    PREFIX + "small_personas", "Personas of the model in use holding under 1 % of this worker's users in a persona."
)
USERS = Gauge(PREFIX + "users", "Users held in this worker's state (active partitions).")
EVENT_TO_CHANGE = Histogram(
    PREFIX + "event_to_change_seconds",
    "Wall time from consuming an event to emitting the change it caused.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0),
)
BATCH_SECONDS = Histogram(
    PREFIX + "batch_seconds",
    "Processing time of one batch of input records.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
MODEL_VERSION = Gauge(PREFIX + "model_version", "Version of the model snapshot this worker assigns with.")
MODEL_PERSONAS = Gauge(PREFIX + "model_personas", "Personas in the current model.")
PERSONA_CHANGES = Counter(
    PREFIX + "persona_changes", "Persona lifecycle events announced by the trainer (on the trainer worker).", ["kind"]
)
TRAINING_SAMPLES = Counter(PREFIX + "training_samples", "Samples learned by the trainer (on the trainer worker).")
SAMPLES_SENT = Counter(
    PREFIX + "training_samples_sent", "Training samples this worker sent to the trainer (acknowledged by the broker)."
)
RECORDS_REDELIVERED = Counter(
    PREFIX + "records_redelivered",
    "Records delivered again after they were applied, skipped by the partition's offset gate.",
    ["stream"],
)
RECORDS_REFETCHED = Counter(
    PREFIX + "records_refetched",
    "Records the consumer skipped or dropped, read from the broker by the offset gate and applied.",
    ["stream"],
)
RECORDS_STREAMED = Counter(
    PREFIX + "records_streamed",
    "Records of a consumed stream that reached the worker through Faust's per-message streams instead of whole "
    "fetches (0 with the Faust versions checked; applied all the same).",
    ["stream"],
)
RECORDS_HELD = Counter(
    PREFIX + "records_held",
    "Records not applied because an earlier offset could not be read yet (read again from the position later).",
    ["stream"],
)
OUTBOX_PENDING = Gauge(
    PREFIX + "outbox_pending",
    "Records of applied batches queued for the next delivery round (outputs, states, positions).",
)
STATES_WRITTEN = Counter(
    PREFIX + "states_written",
    "User states written to the changelog (deletions of erased users included): each user's newest, at most once "
    "per state_write_interval.",
)
OUTBOX_ROUND_SECONDS = Histogram(
    PREFIX + "outbox_round_seconds",
    "Wall time of one delivery round: its outputs, states and positions sent and acknowledged by the broker.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
WATERMARK = Gauge(PREFIX + "watermark_seconds", "Event-time watermark per partition (Unix seconds).", ["partition"])
WATERMARK_DELAY = Gauge(
    PREFIX + "watermark_delay_seconds", "Wall time minus the partition's event-time watermark.", ["partition"]
)
CONSUMER_LAG = Gauge(
    PREFIX + "consumer_lag",
    "Records of a consumed partition not applied yet: its end offset as last fetched minus the worker's position.",
    ["topic", "partition"],
)
MODEL_DRIFT = Gauge(
    PREFIX + "model_centroid_drift",
    "Mean distance (scaled feature units) the personas' centroids moved with the last model update.",
)
MODEL_UPDATED = Gauge(PREFIX + "model_updated_timestamp_seconds", "When this worker adopted its current model.")
HOUSEKEEPING_SECONDS = Histogram(
    PREFIX + "housekeeping_seconds",
    "One run of the one-second timer: model and assignment catch-up, probes of idle partitions, offset commits.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
PARTITIONS_OWNED = Gauge(PREFIX + "partitions_owned", "Input partitions this worker owns with their state recovered.")
READY = Gauge(PREFIX + "ready", "1 when the worker owns partitions with recovered state and no rebalance is under way.")
TOPIC_PROBLEMS = Gauge(
    PREFIX + "topic_problems",
    "Topics the worker reads or writes that are missing or partitioned unlike PARTITIONS, as last checked (records "
    "are not applied while above 0).",
)
REROUTED_WAITING = Gauge(
    PREFIX + "rerouted_waiting",
    "Records on the re-routing topic after the group's committed position, per partition (as the broker reports "
    "its end offset; every member reports every partition).",
    ["partition"],
)
REROUTED_STALLED = Gauge(
    PREFIX + "rerouted_stalled_seconds",
    "How long records have waited on a partition of the re-routing topic with the group's committed position "
    "standing still (0: nothing waits, or the position moves).",
    ["partition"],
)


def exposition() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST
