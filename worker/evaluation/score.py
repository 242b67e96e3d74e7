"""Scores of one run against its population's ground truth. Pure: a population, the changes and model versions
that came out, and the settings; no broker.

- ``ari`` / ``nmi``: final personas (each user's last change) vs the true final persona (``dormant`` for users
  gone silent); users without a persona count as one more label.
- ``batch_ari``: scikit-learn ``KMeans`` with the true number of labels on every user's final features (the
  offline upper bound), and ``ari_ratio`` = ours / batch.
- ``switch_detected``: share of switchers with a change, after the switch, into the persona that holds most of
  the users of their new true persona; with the lag in events and hours of event time.
- ``silent_moved``: share of silent users moved out of the persona they held when they stopped, and the lag.
- ``spurious_per_user``: moves of users whose behaviour never changed, per such user.
- ``id_stability``: share of those users assigned the same persona id, on their final features, by every model
  version published after the first.
- ``reasons_hit``: share of moves whose top reason is among the 3 features that changed most (in the model's
  scaled units) for that user between the previous assignment and the move.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from worker import codec
from worker.clustering import ModelSnapshot
from worker.evaluation.engines import Outcome
from worker.events.ingest import EventParser
from worker.events.timefmt import parse_timestamp
from worker.features.state import UserState, apply_event
from worker.personas.registry import DORMANT, NEW, QUIET
from worker.settings import Settings
from worker.synth.population import Population, Truth

_HOUR_MS = 3_600_000
TOP_MOVED = 3

# metric -> (comparison, threshold): the targets for the default settings
TARGETS: dict[str, tuple[str, float]] = {
    "ari": (">=", 0.80),
    "ari_ratio": (">=", 0.90),
    "switch_detected": (">=", 0.90),
    "silent_moved": (">=", 0.90),
    "spurious_per_user": ("<=", 0.05),
    "id_stability": (">=", 0.99),
}


@dataclass(frozen=True)
class _Replay:
    """Each user's raw feature rows at the event times asked for."""

    rows: dict[tuple[str, int], bytes]  # FeatureSpace.packed_row
    events: dict[str, list[int]]  # event times per user, sorted


def _replay(pop: Population, s: Settings, snap: ModelSnapshot, queries: Mapping[str, Iterable[int]]) -> _Replay:
    parser = EventParser(1 << 30, 1 << 62)
    by_user: dict[str, list[Any]] = defaultdict(list)
    for e in pop.events:
        by_user[e["user_id"]].append(parser.parse(codec.dumps(e), 2**62))
    rows: dict[tuple[str, int], bytes] = {}
    times: dict[str, list[int]] = {}
    gap = int(s.session_gap_seconds * 1000)
    for uid, evs in by_user.items():
        evs.sort(key=lambda ev: ev.ts)
        times[uid] = [ev.ts for ev in evs]
        state = UserState(len(snap.space.half_lives_ms))
        pending = sorted(set(queries.get(uid, ())))
        i = 0
        for t in pending:
            while i < len(evs) and evs[i].ts <= t:
                apply_event(state, evs[i], snap.space.half_lives_ms, s.max_types_per_user, gap)
                i += 1
            rows[uid, t] = snap.space.packed_row(state, t)
    return _Replay(rows, times)


def _scaled(snap: ModelSnapshot, rows: Sequence[bytes]) -> np.ndarray:
    x = snap.space.model_units(rows)
    out: np.ndarray = (x - snap.mean) / snap.scale
    return out


def _ms(c: dict[str, Any]) -> int:
    return parse_timestamp(c["changed_at"])


def score(pop: Population, outcome: Outcome, s: Settings) -> dict[str, Any]:
    truth = pop.truth
    chains: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in {c["event_id"]: c for c in outcome.changes}.values():  # re-emissions count once
        chains[c["user_id"]].append(c)
    for chain in chains.values():
        chain.sort(key=lambda c: c["sequence"])
    final = {u: chain[-1]["to_segment"] for u, chain in chains.items()}
    users = sorted(truth)
    out: dict[str, Any] = {
        "users": len(users),
        "events": len(pop.events),
        "assigned": sum(1 for u in users if final.get(u, NEW) != NEW) / max(1, len(users)),
        "personas_true": len({t.final for t in truth.values()} - {DORMANT}),
        "changes": sum(len(c) for c in chains.values()),
        "model_versions": len(outcome.snapshots),
    }
    y_true = [truth[u].final for u in users]
    y_pred = [final.get(u, "unassigned") for u in users]
    out["ari"] = float(adjusted_rand_score(y_true, y_pred))
    out["nmi"] = float(normalized_mutual_info_score(y_true, y_pred))
    if not outcome.snapshots:
        return out
    last = outcome.snapshots[-1]
    out["personas_found"] = len(last.persona_ids)
    # which true persona each persona id stands for: the majority of its users at the end
    votes: dict[str, Counter[str]] = defaultdict(Counter)
    for u in users:
        if u in final:
            votes[final[u]][truth[u].final] += 1
    meaning = {pid: v.most_common(1)[0][0] for pid, v in votes.items()}

    queries: dict[str, set[int]] = defaultdict(set)
    for u in users:
        queries[u].add(pop.end_ms)
    moves = [c for chain in chains.values() for c in chain if _is_model_move(c)]
    at_seq = {(c["user_id"], c["sequence"]): _ms(c) for chain in chains.values() for c in chain}
    before = {c["event_id"]: (c["user_id"], c["sequence"] - 1) for c in moves}
    prev_at = {eid: at_seq[key] for eid, key in before.items() if key in at_seq}
    for c in moves:
        if c["event_id"] in prev_at:
            queries[c["user_id"]].update((_ms(c), prev_at[c["event_id"]]))
    rep = _replay(pop, s, last, queries)
    end_rows = _scaled(last, [rep.rows[u, pop.end_ms] for u in users])

    k_true = len(set(y_true))
    batch = KMeans(n_clusters=k_true, n_init=10, random_state=0).fit_predict(end_rows)
    out["batch_ari"] = float(adjusted_rand_score(y_true, batch))
    out["ari_ratio"] = out["ari"] / out["batch_ari"] if out["batch_ari"] > 0 else None

    out.update(_switches(truth, chains, meaning, rep))
    out.update(_silences(truth, chains))
    steady = [i for i, u in enumerate(users) if truth[u].stable and truth[u].joined_at is None]
    out["stable_users"] = len(steady)
    spurious = sum(1 for i in steady for c in chains.get(users[i], ()) if c["from_segment"] not in (None, NEW))
    out["spurious_per_user"] = spurious / len(steady) if steady else None
    if steady and len(outcome.snapshots) > 1:
        x = end_rows[steady]
        ids = np.array([[snap.persona_ids[j] for j in snap.assign_scaled(x)] for snap in outcome.snapshots[1:]])
        out["id_stability"] = float((ids == ids[0]).all(0).mean())
    hits = judged = 0
    for c in moves:
        if c["event_id"] not in prev_at or not c.get("reasons"):
            continue
        before, after = _scaled(last, [rep.rows[c["user_id"], prev_at[c["event_id"]]], rep.rows[c["user_id"], _ms(c)]])
        moved = {last.space.names[i] for i in np.argsort(-np.abs(after - before))[:TOP_MOVED]}
        judged += 1
        hits += c["reasons"][0]["feature"] in moved
    out["reasons_judged"] = judged
    out["reasons_hit"] = hits / judged if judged else None
    return out


def _is_model_move(c: dict[str, Any]) -> bool:
    return c["from_segment"] not in (None, NEW, *QUIET) and c["to_segment"] not in QUIET and c.get("trigger") == "event"


def _switches(
    truth: Mapping[str, Truth], chains: Mapping[str, list[dict[str, Any]]], meaning: Mapping[str, str], rep: _Replay
) -> dict[str, Any]:
    switchers = [t for t in truth.values() if t.switch_at is not None]
    lags_h: list[float] = []
    lags_n: list[int] = []
    for t in switchers:
        assert t.switch_at is not None
        for c in chains.get(t.user_id, ()):
            at = _ms(c)
            if at >= t.switch_at and meaning.get(c["to_segment"]) == t.final:
                lags_h.append((at - t.switch_at) / _HOUR_MS)
                times = rep.events[t.user_id]
                lags_n.append(sum(1 for ts in times if t.switch_at <= ts <= at))
                break
    return {
        "switchers": len(switchers),
        "switch_detected": len(lags_h) / len(switchers) if switchers else None,
        "switch_lag_events_p50": _pct(lags_n, 50),
        "switch_lag_hours_p50": _pct(lags_h, 50),
        "switch_lag_hours_p90": _pct(lags_h, 90),
    }


def _silences(truth: Mapping[str, Truth], chains: Mapping[str, list[dict[str, Any]]]) -> dict[str, Any]:
    silent = [t for t in truth.values() if t.silent_at is not None]
    lags: list[float] = []
    for t in silent:
        assert t.silent_at is not None
        held = None
        for c in chains.get(t.user_id, ()):
            at = _ms(c)
            if at <= t.silent_at:
                held = c["to_segment"]
            elif c["from_segment"] == held and held is not None:
                lags.append((at - t.silent_at) / (24 * _HOUR_MS))
                break
    return {
        "silent": len(silent),
        "silent_moved": len(lags) / len(silent) if silent else None,
        "silent_lag_days_p50": _pct(lags, 50),
    }


def _pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def verdicts(scores: Mapping[str, Any]) -> dict[str, bool]:
    """Each target that applies to these scores (its metric is not None): met or not."""
    out = {}
    for name, (op, threshold) in TARGETS.items():
        value = scores.get(name)
        if value is None:
            continue
        out[name] = value >= threshold if op == ">=" else value <= threshold
    return out


def misses(scores: Mapping[str, Any]) -> dict[str, Any]:
    """The targets a run misses, each with its value; ``personas`` as (found, true) when the count is wrong."""
    out: dict[str, Any] = {name: scores[name] for name, ok in verdicts(scores).items() if not ok}
    if scores["personas_found"] != scores["personas_true"]:
        out["personas"] = (scores["personas_found"], scores["personas_true"])
    return out
