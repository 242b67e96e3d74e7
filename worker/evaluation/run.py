"""``segment-worker evaluate``: scenario worlds through the segmentation, scored against their ground truth."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.broker import EmbeddedBroker, free_port
from worker.evaluation.engines import Outcome, Say, encode, run_core, run_pipeline
from worker.evaluation.score import TARGETS, score, verdicts
from worker.settings import Settings
from worker.synth.population import Population, generate_world
from worker.synth.scenarios import SCENARIOS, world


def sized(settings: Settings, users: int) -> Settings:
    """The first fit waits for ``warmup_samples`` distinct users: a small population gets half of its users."""
    return settings.replace(warmup_samples=max(10 * settings.k_max, min(settings.warmup_samples, users // 2)))


@dataclass(frozen=True)
class Plan:
    scenarios: Sequence[str]
    seeds: Sequence[int]
    users: int
    days: float
    engine: str  # "pipeline" or "core"


def evaluate(plan: Plan, settings: Settings, environ: dict[str, str], say: Say, timeout: float) -> list[dict[str, Any]]:
    for name in plan.scenarios:
        if name not in SCENARIOS:
            raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    deadline = time.monotonic() + timeout
    s = sized(settings, plan.users)
    results: list[dict[str, Any]] = []
    jobs = [(name, seed) for name in plan.scenarios for seed in plan.seeds]

    def one(name: str, seed: int, run: Any) -> None:
        w = world(name, seed)
        pop = generate_world(w, plan.users, plan.days, seed)
        days = plan.days * w.span
        say(f"{name} (seed {seed}): {len(pop.events):,} events of {len(pop.truth):,} users over {days:g} days")
        outcome: Outcome = run(name, seed, pop)
        row = {"scenario": name, "seed": seed, "engine": outcome.engine, **score(pop, outcome, s)}
        row["seconds"] = round(outcome.seconds, 1)
        results.append(row)
        say(summary_line(row))

    if plan.engine == "core":
        for name, seed in jobs:
            one(name, seed, lambda _n, _s, pop: run_core(s, encode(pop.events)))
        return results
    with tempfile.TemporaryDirectory(prefix="segment-worker-eval-") as tmp:
        work = Path(tmp)
        with EmbeddedBroker(log_file=work / "broker.log") as broker:

            def pipeline(name: str, seed: int, pop: Population) -> Outcome:
                tag = f"eval-{name}-{seed}-{int(time.time() * 1000) % 10**8}"
                run_s = s.replace(
                    broker=broker.url,
                    app_id=tag,
                    input_topic=f"{tag}-events",
                    output_topic=f"{tag}-changes",
                    dlq_topic=f"{tag}-dlq",
                    web_port=free_port(),
                    data_dir=str(work / tag),
                )
                return run_pipeline(run_s, pop.events, environ, work, broker.bootstrap, lambda _m: None, deadline)

            for name, seed in jobs:
                one(name, seed, pipeline)
    return results


def summary_line(r: dict[str, Any]) -> str:
    return (
        f"{r['scenario']} seed {r['seed']}: ARI {_f(r.get('ari'))} (batch {_f(r.get('batch_ari'))}), "
        f"personas {r.get('personas_found', 0)}/{r['personas_true']}, switches {_p(r.get('switch_detected'))}, "
        f"silent {_p(r.get('silent_moved'))}, spurious {_f(r.get('spurious_per_user'))}/user, "
        f"id stability {_p(r.get('id_stability'))}, reasons {_p(r.get('reasons_hit'))}"
    )


COLUMNS = (
    ("scenario", "scenario", 10),
    ("seed", "seed", 4),
    ("ari", "ARI", 5),
    ("batch_ari", "batch", 5),
    ("ari_ratio", "ratio", 5),
    ("nmi", "NMI", 5),
    ("personas", "K", 5),
    ("switch_detected", "switch", 6),
    ("switch_lag_events_p50", "lag ev", 6),
    ("switch_lag_hours_p50", "lag h", 6),
    ("silent_moved", "silent", 6),
    ("silent_lag_days_p50", "lag d", 5),
    ("spurious_per_user", "spur/u", 6),
    ("id_stability", "ids", 6),
    ("reasons_hit", "reason", 6),
    ("seconds", "secs", 5),
)
_PERCENT = {"switch_detected", "silent_moved", "id_stability", "reasons_hit"}
_ONE_DIGIT = {"switch_lag_events_p50", "switch_lag_hours_p50", "silent_lag_days_p50", "seconds"}


def _f(v: Any, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _p(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def _cell(r: dict[str, Any], key: str) -> str:
    if key == "personas":
        return f"{r.get('personas_found', 0)}/{r['personas_true']}"
    v = r.get(key)
    if key in ("scenario", "seed"):
        return str(v)
    text = _p(v) if key in _PERCENT else _f(v, 1 if key in _ONE_DIGIT else 2)
    if v is not None and key in TARGETS and not verdicts({key: v})[key]:
        text += "!"
    return text


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The results as a fixed-width table; a value that misses its target is marked with ``!``."""
    head = " ".join(f"{title:>{w}}" if i else f"{title:<{w}}" for i, (_, title, w) in enumerate(COLUMNS))
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = [f"{_cell(r, key):>{w}}" if i else f"{_cell(r, key):<{w}}" for i, (key, _, w) in enumerate(COLUMNS)]
        lines.append(" ".join(cells))
    return "\n".join(lines)


def target_summary(rows: Sequence[dict[str, Any]]) -> tuple[str, bool]:
    """Per target: the worst value over all runs it applies to, and whether every run met it."""
    lines = []
    ok = True
    for name, (op, threshold) in TARGETS.items():
        values = [r[name] for r in rows if r.get(name) is not None]
        if not values:
            continue
        worst = min(values) if op == ">=" else max(values)
        met = sum(verdicts({name: v})[name] for v in values)
        ok &= met == len(values)
        lines.append(f"  {name:<18} target {op} {threshold:<5} worst {worst:.3f}  met in {met}/{len(values)} runs")
    return "\n".join(lines), ok
