"""``segment-worker demo``: the whole loop on one machine, no Kafka installation needed.

Starts the embedded broker and a worker process, streams a synthetic population with known personas (the first
weeks, then — once the model has learned them — the rest, including users who switch persona or go silent, and a
few malformed records), shows live progress, and prints the personas found, the migrations and the agreement
with the generator's truth.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from worker import codec
from worker.broker import EmbeddedBroker, free_port
from worker.errors import SegmentWorkerError
from worker.kafkaio import create_topics, produce, read_all
from worker.process import WorkerProcess, metric_total
from worker.settings import Settings
from worker.synth import generate
from worker.synth.agreement import agreement

BAD_RECORDS = (
    b"this is not json",
    b'{"user_id": "u-bad", "event_type": "view"}',
    b'{"user_id": 42, "event_type": "view", "timestamp": 1767225600000}',
    b'{"user_id": "u-bad", "event_type": "view", "timestamp": "yesterday"}',
    b'{"user_id": "u-bad", "event_type": "purchase", "timestamp": 1767225600000, "value": NaN}',
)


def demo(
    settings: Settings,
    environ: dict[str, str],
    *,
    users: int,
    days: float,
    seed: int,
    timeout: float,
    json_out: str | None = None,
) -> int:
    started = time.monotonic()
    deadline = started + timeout
    say = _printer(started)
    with tempfile.TemporaryDirectory(prefix="segment-worker-demo-") as tmp:
        work = Path(tmp)
        with EmbeddedBroker(log_file=work / "broker.log") as broker:
            s = settings.replace(
                broker=broker.url,
                web_port=free_port(),
                data_dir=str(work / "data"),
                warmup_samples=max(10 * settings.k_max, min(settings.warmup_samples, users // 2)),
            )
            say(f"embedded Kafka broker (Tansu) on {broker.bootstrap}")
            pop = generate(users, days, seed)
            switching = sum(1 for t in pop.truth.values() if t.switch_at)
            silent = sum(1 for t in pop.truth.values() if t.silent_at)
            say(
                f"synthetic population: {users:,} users, {len(pop.events):,} events over {days:g} days; "
                f"{switching} switch persona, {silent} go silent"
            )
            create_topics(
                broker.bootstrap, {s.input_topic: s.partitions, s.output_topic: s.partitions, s.dlq_topic: s.partitions}
            )
            worker = WorkerProcess(s, environ, work / "worker.log")
            try:
                worker.wait_ready(min(90.0, deadline - time.monotonic()))
                say(f"worker up (web API {worker.base})")
                summary = _stream(s, pop, worker, broker.bootstrap, say, deadline)
                summary["personas"] = worker.get("/personas")
            finally:
                worker.stop()
            changes = [codec.loads(r.value) for r in read_all(broker.bootstrap, s.output_topic) if r.value]
            dead = read_all(broker.bootstrap, s.dlq_topic)
    report = _report(pop, changes, dead, summary, time.monotonic() - started)
    print(report["text"], flush=True)
    if json_out:
        Path(json_out).write_bytes(codec.dumps_pretty({k: v for k, v in report.items() if k != "text"}))
    return 0 if report["ok"] else 1


def _printer(started: float) -> Any:
    def say(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", flush=True)

    return say


def _stream(s: Settings, pop: Any, worker: WorkerProcess, bootstrap: str, say: Any, deadline: float) -> dict[str, Any]:
    # phase 1: the first weeks, so the trainer can learn the personas; phase 2: the rest at full speed
    learn_until = pop.start_ms + int(1.5 * max(s.half_lives_ms))
    first = [e for e in pop.events if _ts(e) < learn_until]
    rest = [e for e in pop.events if _ts(e) >= learn_until]
    encoded = [(e["user_id"].encode(), codec.dumps(e)) for e in first]
    produce(bootstrap, s.input_topic, encoded)
    say(
        f"phase 1: {len(first):,} events of the first {1.5 * max(s.half_lives_ms) / 86_400_000:g} days sent; "
        "waiting for the first model"
    )
    m = _wait(worker, lambda m: m.get("segment_worker_model_version", 0) >= 1, say, deadline, len(first))
    encoded = [(e["user_id"].encode(), codec.dumps(e)) for e in rest]
    encoded += [(b"u-bad", raw) for raw in BAD_RECORDS]
    t0 = time.monotonic()
    produce(bootstrap, s.input_topic, encoded)
    say(f"phase 2: {len(rest):,} more events and {len(BAD_RECORDS)} malformed records sent")
    total = len(pop.events)
    m = _wait(
        worker,
        lambda m: (
            metric_total(m, "segment_worker_events_processed_total") >= total
            and metric_total(m, "segment_worker_events_dead_lettered_total") >= len(BAD_RECORDS)
        ),
        say,
        deadline,
        total,
    )
    elapsed = time.monotonic() - t0
    # let the last changes flush (they are sent right after their batch)
    time.sleep(1.0)
    m = worker.metrics()
    return {"metrics": m, "phase2_seconds": elapsed, "phase2_events": len(rest)}


def _ts(e: dict[str, Any]) -> int:
    from worker.events.timefmt import parse_timestamp

    return parse_timestamp(e["timestamp"])


def _wait(worker: WorkerProcess, done: Any, say: Any, deadline: float, target: int) -> dict[str, float]:
    last = 0.0
    while True:
        if worker.proc.poll() is not None:
            raise SegmentWorkerError(f"worker exited with {worker.proc.returncode}; see {worker.log_path}")
        m = worker.metrics()
        if done(m):
            return m
        if time.monotonic() > deadline:
            raise SegmentWorkerError("demo timed out; see " + str(worker.log_path))
        if time.monotonic() - last >= 2.0:
            last = time.monotonic()
            say(
                f"processed {metric_total(m, 'segment_worker_events_processed_total'):,.0f}/{target:,} events, "
                f"{metric_total(m, 'segment_worker_segment_changes_total'):,.0f} segment changes, "
                f"model v{m.get('segment_worker_model_version', 0):.0f}"
            )
        time.sleep(0.5)


def _report(
    pop: Any, changes: list[dict[str, Any]], dead: list[Any], summary: dict[str, Any], seconds: float
) -> dict[str, Any]:
    last: dict[str, dict[str, Any]] = {}
    for c in changes:
        if c["sequence"] >= last.get(c["user_id"], {"sequence": 0})["sequence"]:
            last[c["user_id"]] = c
    final = {u: c["to_segment"] for u, c in last.items()}
    names = {c["to_segment"]: c["to_segment_name"] for c in changes}
    names.update({p["id"]: p["name"] for p in summary["personas"]["personas"]})
    agree = agreement(final, pop.truth)
    personas = summary["personas"]["personas"]
    moves = Counter((c["from_segment"], c["to_segment"]) for c in changes if c["from_segment"] is not None)
    m = summary["metrics"]
    rate = summary["phase2_events"] / max(1e-9, summary["phase2_seconds"])
    lines = ["", "=" * 78, "segment-worker demo summary", "=" * 78]
    lines.append(
        f"events: {metric_total(m, 'segment_worker_events_processed_total'):,.0f} applied, "
        f"{len(dead)} dead-lettered ("
        + ", ".join(sorted({r.headers.get("dlq.reason", b"?").decode() for r in dead}))
        + ")"
    )
    lines.append(
        f"phase 2 end to end: {summary['phase2_events']:,} events in {summary['phase2_seconds']:.1f}s "
        f"({rate:,.0f} events/s incl. produce)"
    )
    lines.append(f"\npersonas found: {len(personas)} (model v{summary['personas']['model_version']})")
    lines.append(f"  {'id':<8} {'users':>6}  {'name':<52} truth (purity)")
    for p in sorted(personas, key=lambda p: -p["size"]):
        label, share = agree.purity.get(p["id"], ("-", 0.0))
        lines.append(f"  {p['id']:<8} {p['size']:>6}  {p['name'][:52]:<52} {label} ({share:.0%})")
    lines.append(
        f"\nsegment changes: {len(changes):,} ({len(changes) - sum(moves.values()):,} first assignments, "
        f"{sum(moves.values()):,} migrations)"
    )
    for (a, b), n in moves.most_common(8):
        lines.append(f"  {n:>5}  {names.get(a, a)}  ->  {names.get(b, b)}")
    lines.append("\nagreement with the generator's truth:")
    lines.append(f"  adjusted Rand index           {agree.ari:.3f}")
    lines.append(f"  users with a persona          {agree.assigned:,}/{agree.users:,}")
    lines.append(f"  persona switches detected     {agree.switchers_detected}/{agree.switchers}")
    lines.append(f"  silent users moved to dormant {agree.silent_moved}/{agree.silent}")
    lines.append(f"\ndone in {seconds:.0f}s")
    ok = agree.assigned > 0 and len(dead) == len(BAD_RECORDS)
    return {
        "ok": ok,
        "text": "\n".join(lines),
        "agreement": agree.as_dict(),
        "changes": len(changes),
        "migrations": sum(moves.values()),
        "dead_letters": len(dead),
        "personas": personas,
        "events_per_second_phase2": rate,
    }
