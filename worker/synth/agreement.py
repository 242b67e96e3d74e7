"""How well do the worker's personas agree with a synthetic population's ground truth?"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from river import metrics

from worker.personas.registry import NEW
from worker.synth.population import Truth


@dataclass(frozen=True)
class Agreement:
    ari: float
    assigned: int
    users: int
    purity: dict[str, tuple[str, float]]  # persona id -> (majority true persona, share)
    switchers: int
    switchers_detected: int
    silent: int
    silent_moved: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "ari": round(self.ari, 4),
            "assigned": self.assigned,
            "users": self.users,
            "purity": {k: {"truth": t, "share": round(s, 4)} for k, (t, s) in self.purity.items()},
            "switchers": self.switchers,
            "switchers_detected": self.switchers_detected,
            "silent": self.silent,
            "silent_moved": self.silent_moved,
        }


def agreement(final: Mapping[str, str], truth: Mapping[str, Truth], dormant_id: str = "dormant") -> Agreement:
    """``final``: each user's segment at the end (users without one count as unassigned; ``assigned`` counts users
    the model placed: a persona or dormant, not ``new``)."""
    ari = metrics.AdjustedRand()
    for uid, t in truth.items():
        ari.update(t.final, final.get(uid, "unassigned"))
    by_persona: dict[str, Counter[str]] = {}
    for uid, pid in final.items():
        if uid in truth:
            by_persona.setdefault(pid, Counter())[truth[uid].final] += 1
    purity = {}
    for pid, counts in by_persona.items():
        label, n = counts.most_common(1)[0]
        purity[pid] = (label, n / sum(counts.values()))
    switchers = [t for t in truth.values() if t.switch_at is not None]
    silent = [t for t in truth.values() if t.silent_at is not None]
    detected = sum(1 for t in switchers if t.user_id in final and purity[final[t.user_id]][0] == t.final)
    moved = sum(1 for t in silent if final.get(t.user_id) == dormant_id)
    return Agreement(
        float(ari.get()),
        sum(1 for u in truth if final.get(u, NEW) != NEW),
        len(truth),
        purity,
        len(switchers),
        detected,
        len(silent),
        moved,
    )
