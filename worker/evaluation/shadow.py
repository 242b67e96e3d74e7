"""Shadow comparison: the same event log through the current and a candidate configuration, side by side.

Both run the segmentation core in-process (:func:`worker.evaluation.engines.run_core`, the worker's own code) on
the same records in the same order. Persona ids of two models are unrelated, so the candidate's personas are first
mapped to the current ones by the users they share at the end; a user then *migrates differently* when their
chain of personas (first assignment, then every move), in current ids, is not the same in both runs.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any

from sklearn.metrics import adjusted_rand_score

from worker.evaluation.engines import Outcome
from worker.personas.registry import RESERVED

Chain = tuple[str, ...]


def chains(outcome: Outcome) -> dict[str, Chain]:
    """Each user's personas in order: the first assignment and every move (re-emissions count once)."""
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in {c["event_id"]: c for c in outcome.changes}.values():
        by_user[c["user_id"]].append(c)
    return {u: tuple(c["to_segment"] for c in sorted(cs, key=lambda c: c["sequence"])) for u, cs in by_user.items()}


def mapping(current: Mapping[str, Chain], candidate: Mapping[str, Chain]) -> dict[str, str]:
    """Candidate persona id -> the current id most of its users hold at the end."""
    votes: dict[str, Counter[str]] = defaultdict(Counter)
    for u, ch in candidate.items():
        if u in current:
            votes[ch[-1]][current[u][-1]] += 1
    out = {pid: v.most_common(1)[0][0] for pid, v in votes.items()}
    return out | {segment: segment for segment in RESERVED}  # the same segment in any model


def compare(current: Outcome, candidate: Outcome, names: Mapping[str, str] | None = None) -> dict[str, Any]:
    cur, cand = chains(current), chains(candidate)
    to_current = mapping(cur, cand)
    users = sorted(set(cur) | set(cand))
    differ: list[dict[str, Any]] = []
    for u in users:
        a = cur.get(u, ())
        b = tuple(to_current.get(p, f"new:{p}") for p in cand.get(u, ()))
        if a != b:
            differ.append({"user_id": u, "current": list(a), "candidate": list(b)})
    both = [u for u in users if u in cur and u in cand]
    moved_cur = {u for u, ch in cur.items() if len(ch) > 1}
    moved_cand = {u for u, ch in cand.items() if len(ch) > 1}
    flows: Counter[tuple[str, str]] = Counter()
    for u in both:
        flows[cur[u][-1], to_current.get(cand[u][-1], f"new:{cand[u][-1]}")] += 1
    return {
        "users": len(users),
        "current": _side(current, cur),
        "candidate": _side(candidate, cand) | {"mapped_to_current": to_current},
        "final_agreement_ari": float(adjusted_rand_score([cur[u][-1] for u in both], [cand[u][-1] for u in both]))
        if both
        else None,
        "same_final_persona": sum(1 for u in both if to_current.get(cand[u][-1]) == cur[u][-1]) / max(1, len(both)),
        "migrate_only_current": len(moved_cur - moved_cand),
        "migrate_only_candidate": len(moved_cand - moved_cur),
        "migrate_differently": len(differ),
        "final_flows": [{"current": a, "candidate": b, "users": n} for (a, b), n in flows.most_common() if a != b],
        "users_differing": differ,
    }


def _side(outcome: Outcome, ch: Mapping[str, Chain]) -> dict[str, Any]:
    snap = outcome.snapshots[-1] if outcome.snapshots else None
    sizes = Counter(c[-1] for c in ch.values())
    personas = []
    if snap is not None:
        named = zip(snap.persona_ids, snap.persona_names, strict=True)
        personas = [{"id": p, "name": n, "users": sizes.get(p, 0)} for p, n in named]
    return {
        "personas": personas,
        "dormant": sizes.get("dormant", 0),
        "changes": len({c["event_id"] for c in outcome.changes}),
        "migrations": sum(len(c) - 1 for c in ch.values()),
        "model_version": snap.version if snap else 0,
    }


def render(report: Mapping[str, Any], limit: int = 10) -> str:
    cur, cand = report["current"], report["candidate"]
    lines = [f"shadow comparison over {report['users']:,} users", ""]
    for label, side in (("current", cur), ("candidate", cand)):
        lines.append(
            f"{label}: {len(side['personas'])} personas (model v{side['model_version']}), {side['changes']:,} changes, "
            f"{side['migrations']:,} migrations, {side['dormant']:,} dormant"
        )
        for p in sorted(side["personas"], key=lambda p: -p["users"]):
            mapped = f"  ~ {cand['mapped_to_current'].get(p['id'], '-')}" if label == "candidate" else ""
            lines.append(f"  {p['id']:<6} {p['users']:>7,}  {p['name'][:56]}{mapped}")
    ari = report["final_agreement_ari"]
    lines += [
        "",
        f"final personas agree (ARI): {'-' if ari is None else f'{ari:.3f}'}; "
        f"same persona after mapping: {report['same_final_persona']:.1%}",
        f"users who migrate differently: {report['migrate_differently']:,} "
        f"(migrate only now: {report['migrate_only_current']:,}, only with the candidate: "
        f"{report['migrate_only_candidate']:,})",
    ]
    for f in report["final_flows"][:limit]:
        lines.append(f"  {f['users']:>7,}  end in {f['current']} now, in {f['candidate']} with the candidate")
    for d in report["users_differing"][:limit]:
        lines.append(f"  {d['user_id']}: {' -> '.join(d['current']) or '-'}  |  {' -> '.join(d['candidate']) or '-'}")
    return "\n".join(lines)
