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
from worker.cli import report as page
from worker.evaluation.engines import Outcome, run_pipeline
from worker.personas.registry import NEW, RESERVED
from worker.process import metric_total
from worker.settings import Settings
from worker.synth import Population, generate
from worker.synth.agreement import agreement

BAD_RECORDS = (
    b"this is not json",
    b'{"user_id": "u-bad", "event_type": "view"}',
    b'{"user_id": 42, "event_type": "view", "timestamp": 1767225600000}',
    b'{"user_id": "u-bad", "event_type": "view", "timestamp": "yesterday"}',
    b'{"user_id": "u-bad", "event_type": "purchase", "timestamp": 1767225600000, "value": NaN}',
)
BAD_RECORDS_KEYED = [(b"u-bad", raw) for raw in BAD_RECORDS]


def demo(
    settings: Settings,
    environ: dict[str, str],
    *,
    users: int,
    days: float,
    seed: int,
    timeout: float,
    json_out: str | None = None,
    page_out: str | None = None,
) -> int:
    started = time.monotonic()
    deadline = started + timeout
    say = printer(started)
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
            outcome = run_pipeline(s, pop.events, environ, work, broker.bootstrap, say, deadline, BAD_RECORDS_KEYED)
            if page_out:  # what `segment-worker report` writes, from the run's topics (the broker goes with it)
                say(page.report(s, page_out, None) + " (open it in a browser)")
    report = _report(pop, outcome, time.monotonic() - started)
    print(report["text"], flush=True)
    if json_out:
        Path(json_out).write_bytes(codec.dumps_pretty({k: v for k, v in report.items() if k != "text"}))
    return 0 if report["ok"] else 1


def printer(started: float) -> Any:
    """``say(msg)``: a line prefixed with the seconds since ``started``."""

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", flush=True)

    return say


def _persona_changes(outcome: Outcome) -> list[str]:
    """What the model updates did to the personas (the events of PERSONA_TOPIC, as the models carry them)."""
    events = [e for snap in outcome.snapshots for e in snap.changes]
    if not events:
        return ["\npersona changes: none (the personas stayed as the first model found them)"]
    moved = Counter(c["cause"] for c in outcome.changes if c["trigger"] == "model_update")
    lines = [f"\npersona changes: {len(events)}"]
    for e in events:
        before = ", ".join(p["id"] for p in e["from"]) or "-"
        after = ", ".join(f"{p['id']} ({p['name']})" for p in e["to"]) or "-"
        users = f"  ({moved[e['event_id']]:,} users moved at once)" if moved[e["event_id"]] else ""
        lines.append(f"  v{e['model_version']:<3} {e['kind']:<8} {before}  ->  {after}{users}")
    return lines


def _report(pop: Population, outcome: Outcome, seconds: float) -> dict[str, Any]:
    changes = outcome.changes
    last: dict[str, dict[str, Any]] = {}
    for c in changes:
        if c["sequence"] >= last.get(c["user_id"], {"sequence": 0})["sequence"]:
            last[c["user_id"]] = c
    final = {u: c["to_segment"] for u, c in last.items()}
    names = {c["to_segment"]: c["to_segment_name"] for c in changes}
    names.update({p["id"]: p["name"] for p in outcome.personas["personas"]})
    agree = agreement(final, pop.truth)
    personas = outcome.personas["personas"]
    moves = Counter((c["from_segment"], c["to_segment"]) for c in changes if c["from_segment"] not in (None, NEW))
    welcomed = sum(1 for c in changes if c["from_segment"] is None and c["to_segment"] == NEW)
    m = outcome.extra["metrics"]
    rate = outcome.extra["phase2_events"] / max(1e-9, outcome.extra["phase2_seconds"])
    lines = ["", "=" * 78, "segment-worker demo summary", "=" * 78]
    lines.append(
        f"events: {metric_total(m, 'segment_worker_events_processed_total'):,.0f} applied, "
        f"{outcome.dead_letters} dead-lettered"
    )
    lines.append(
        f"phase 2 end to end: {outcome.extra['phase2_events']:,} events in {outcome.extra['phase2_seconds']:.1f}s "
        f"({rate:,.0f} events/s incl. produce)"
    )
    found = sum(1 for p in personas if p["id"] not in RESERVED)
    lines.append(f"\npersonas found: {found} (model v{outcome.personas['model_version']})")
    lines.append(f"  {'id':<8} {'users':>6}  {'name':<52} truth (purity)")
    for p in sorted(personas, key=lambda p: -p["size"]):
        label, share = agree.purity.get(p["id"], ("-", 0.0))
        lines.append(f"  {p['id']:<8} {p['size']:>6}  {p['name'][:52]:<52} {label} ({share:.0%})")
    lines.append(
        f"\nsegment changes: {len(changes):,} ({welcomed:,} users new, "
        f"{len(changes) - welcomed - sum(moves.values()):,} first personas, {sum(moves.values()):,} migrations)"
    )
    for (a, b), n in moves.most_common(8):
        lines.append(f"  {n:>5}  {names.get(a, a)}  ->  {names.get(b, b)}")
    lines += _persona_changes(outcome)
    lines.append("\nagreement with the generator's truth:")
    lines.append(f"  adjusted Rand index           {agree.ari:.3f}")
    lines.append(f"  users with a persona          {agree.assigned:,}/{agree.users:,}")
    lines.append(f"  persona switches detected     {agree.switchers_detected}/{agree.switchers}")
    lines.append(f"  silent users moved to dormant {agree.silent_moved}/{agree.silent}")
    lines.append(f"\ndone in {seconds:.0f}s")
    ok = agree.assigned > 0 and outcome.dead_letters == len(BAD_RECORDS)
    return {
        "ok": ok,
        "text": "\n".join(lines),
        "agreement": agree.as_dict(),
        "changes": len(changes),
        "migrations": sum(moves.values()),
        "dead_letters": outcome.dead_letters,
        "personas": personas,
        "events_per_second_phase2": rate,
    }
