"""The model's feature space: which event types are dimensions, and how a user's state becomes a vector.

Event types are free strings. The trainer picks the ``vocabulary_size`` most active types of the stream (by decayed
count over its samples); every other type of a user is summed into ``rate_other``. The space is part of each model
snapshot, so every worker builds the same vectors for the same model version.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from worker.features.state import UserState, decay_factors

_DAY_MS = 86_400_000
_log1p = math.log1p
FIXED_FEATURES = (
    "rate_other",
    "spend",
    "days_since_last_event",
    "sessions",
    "daypart_night",
    "daypart_morning",
    "daypart_afternoon",
    "daypart_evening",
    "weekend_share",
)


def choose_vocabulary(states: Iterable[UserState], size: int) -> list[str]:
    """The ``size`` event types with the largest total slow-decayed count (ties by name, deterministic)."""
    totals: Counter[str] = Counter()
    for s in states:
        for etype, counts in s.rates.items():
            totals[etype] += counts[-1]
    totals.pop("~other", None)
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
    return [etype for etype, _ in ranked[:size]]


def _label(days: float) -> str:
    return f"{days:g}d"


@dataclass(frozen=True)
class FeatureSpace:
    vocabulary: tuple[str, ...]
    half_lives_ms: tuple[float, ...]
    names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        rate_names = [
            f"rate_{_label(h / _DAY_MS)}:{etype}" for etype in self.vocabulary for h in self.half_lives_ms
        ]
        object.__setattr__(self, "names", (*rate_names, *FIXED_FEATURES))

    @property
    def dim(self) -> int:
        return len(self.names)

    def row(self, state: UserState, t: int) -> list[float]:
        """The (unscaled) vector of ``state`` as of event time ``t``: log-compressed counts and shares."""
        f = decay_factors(max(0, t - state.ref_ts), self.half_lives_ms)
        slow = f[-1]
        rates = state.rates
        out: list[float] = []
        other = 0.0
        vocab = self.vocabulary
        zeros = [0.0] * len(f)
        for etype in vocab:
            counts = rates.get(etype, zeros)
            out.extend(_log1p(c * fi) for c, fi in zip(counts, f, strict=True))
        for etype, counts in rates.items():
            if etype not in vocab:
                other += counts[-1]
        dp = state.daypart
        dp_total = dp[0] + dp[1] + dp[2] + dp[3] + 1.0
        slow_total = state.slow_total + 1.0
        out.append(_log1p(other * slow))
        out.append(_log1p(max(0.0, state.spend[-1]) * slow))
        out.append(_log1p(max(0, t - state.last_ts) / _DAY_MS))
        out.append(_log1p(state.sessions * slow))
        out.extend((x + 0.25) / dp_total for x in dp)
        out.append(state.weekend / slow_total)
        return out

    def matrix(self, states: Sequence[UserState], times: Sequence[int]) -> np.ndarray:
        return np.array([self.row(s, t) for s, t in zip(states, times, strict=True)], dtype=np.float64).reshape(
            len(states), self.dim
        )
