"""The model's feature space: which event types are dimensions, and how a user's state becomes a vector.

Event types are free strings. The trainer picks the ``vocabulary_size`` most active types of the stream (by decayed
count over its samples); every other type of a user is summed into ``rate_other``. The space is part of each model
snapshot, so every worker builds the same vectors for the same model version.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from worker.features.state import UserState, decay_factors

_DAY_MS = 86_400_000
LOG_FLOOR = 0.25
SHARE_FLOOR = 0.05
FIXED_FEATURES = (
    "rate_other",
    "spend",
    "value_per_event",
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
    totals: dict[str, float] = defaultdict(float)
    for s in states:
        for etype, counts in s.rates.items():
            totals[etype] += counts[-1]
    totals.pop("~other", None)
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
    return [etype for etype, _ in ranked[:size]]


def _label(days: float) -> str:
    return f"{days:g}d"


# the fixed features of models fitted before ``value_per_event`` existed (their snapshots still load and assign)
LEGACY_FIXED_FEATURES = tuple(f for f in FIXED_FEATURES if f != "value_per_event")


@dataclass(frozen=True)
class FeatureSpace:
    vocabulary: tuple[str, ...]
    half_lives_ms: tuple[float, ...]
    fixed: tuple[str, ...] = FIXED_FEATURES
    names: tuple[str, ...] = field(init=False)
    _zeros: tuple[float, ...] = field(init=False, repr=False)  # counts of a type the user never did
    _per_event: bool = field(init=False, repr=False)
    _in_vocabulary: frozenset[str] = field(init=False, repr=False)
    _packer: struct.Struct = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rate_names = [f"rate_{_label(h / _DAY_MS)}:{etype}" for etype in self.vocabulary for h in self.half_lives_ms]
        if self.fixed not in (FIXED_FEATURES, LEGACY_FIXED_FEATURES):
            raise ValueError(f"unknown fixed features {self.fixed}")
        object.__setattr__(self, "names", (*rate_names, *self.fixed))
        object.__setattr__(self, "_per_event", "value_per_event" in self.fixed)
        object.__setattr__(self, "_zeros", (0.0,) * len(self.half_lives_ms))
        object.__setattr__(self, "_in_vocabulary", frozenset(self.vocabulary))
        object.__setattr__(self, "_packer", struct.Struct(f"={len(self.names)}d"))

    def __reduce__(self) -> tuple[type[FeatureSpace], tuple[tuple[str, ...], tuple[float, ...], tuple[str, ...]]]:
        # pickled by its arguments: a compiled frozen class cannot take its fields back one by one
        return FeatureSpace, (self.vocabulary, self.half_lives_ms, self.fixed)

    @property
    def dim(self) -> int:
        return len(self.names)

    @property
    def n_log(self) -> int:
        """Leading columns that are counts (log-compressed by :meth:`transform`); the rest are shares."""
        return len(self.names) - 5

    def row(self, state: UserState, t: int) -> list[float]:
        """The raw vector of ``state`` as of event time ``t`` (hot path: plain floats, no logs; see
        :meth:`transform`). Decayed counts per vocabulary type and half-life, other types, spend, value per
        event, days since the last event, sessions, then daypart and weekend shares."""
        dt = t - state.ref_ts
        rates = state.rates
        vocab = self.vocabulary
        out: list[float] = []
        zeros = self._zeros
        if dt <= 0:
            slow = 1.0
            for etype in vocab:
                out += rates.get(etype, zeros)
        else:
            f = decay_factors(dt, self.half_lives_ms)
            slow = f[-1]
            for etype in vocab:
                counts = rates.get(etype)
                out += [c * fi for c, fi in zip(counts, f, strict=True)] if counts else zeros
        other = total = 0.0  # slow counts of the types beyond the vocabulary, of all types (UserState.slow_total)
        in_vocab = self._in_vocabulary
        for etype, counts in rates.items():
            c = counts[-1]
            total += c
            if etype not in in_vocab:
                other += c
        dp = state.daypart
        dp_total = dp[0] + dp[1] + dp[2] + dp[3] + 1.0
        spend = max(0.0, state.spend[-1])
        out += (other * slow, spend * slow)
        if self._per_event:  # decayed value over decayed events: the value of what a user does, not how often
            out.append(spend / total if total > 0 else 0.0)
        out += (
            max(0, t - state.last_ts) / _DAY_MS,
            state.sessions * slow,
            (dp[0] + 0.25) / dp_total,
            (dp[1] + 0.25) / dp_total,
            (dp[2] + 0.25) / dp_total,
            (dp[3] + 0.25) / dp_total,
            state.weekend / (total + 1.0),
        )
        return out

    def packed_row(self, state: UserState, t: int) -> bytes:
        """:meth:`row` as native doubles, packed while its floats are fresh: a batch's rows read back by numpy long
        after they were made cost ~3 µs each in cache misses, packed ones a copy (:meth:`model_units`)."""
        return self._packer.pack(*self.row(state, t))

    def model_units(self, packed: Sequence[bytes]) -> np.ndarray:
        """Rows from :meth:`packed_row` → a writable matrix in model units (:meth:`transform`)."""
        rows = np.frombuffer(bytearray().join(packed), dtype=np.float64)
        return self.transform(rows.reshape(len(packed), self.dim))

    def scale_floor(self) -> np.ndarray:
        """Smallest standard deviation each model feature is scaled by: a change this size means something (about
        30 % more or less of a count, 5 points of a share), however uniform the users the model was fitted on were.
        Without it, a feature that barely varied at the first fit (nobody active at night yet) turns a later
        small difference into a huge distance that swamps every other feature."""
        floor = np.full(self.dim, SHARE_FLOOR)
        floor[: self.n_log] = LOG_FLOOR
        return floor

    def transform(self, rows: np.ndarray) -> np.ndarray:
        """Rows from :meth:`row` → model units (counts log-compressed), in place, vectorised."""
        np.log1p(rows[:, : self.n_log], out=rows[:, : self.n_log])
        return rows

    def matrix(self, states: Sequence[UserState], times: Sequence[int]) -> np.ndarray:
        return self.model_units([self.packed_row(s, t) for s, t in zip(states, times, strict=True)])
