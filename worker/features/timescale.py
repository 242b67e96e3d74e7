"""The stream's rhythm, measured by the trainer, and the half-lives it calls for.

The provisional half-lives (1 and 7 days) suit users with a few events a day. A shop whose customers buy every
few months needs half-lives of months, or every decayed count is ~0 between purchases and the personas can only
tell recency apart. The trainer measures the rhythm on its samples in
event time and the first model fixes the half-lives: the provisional ones times a power of two, the one that
brings the stream's typical gap closest to the gap they suit. Powers of two keep a stream near the provisional
rhythm on exactly the provisional half-lives (no conversion, no change); they only ever grow (see MIN_FACTOR);
and one model lineage keeps its half-lives for good: a persona's centroid only means something in the units it
was learned in.

The typical gap is the pooled one: all sampled users' time since their first event over all their repeat events
(the rate estimate that does not shrink when the window is short, unlike the median of the gaps already seen:
early in a stream nobody has had time for a long gap).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from worker.features.state import UserState

DAY_MS = 86_400_000
# the pooled gap between a user's events that the provisional half-lives suit (measured on the evaluation
# worlds, whose users do a few things a day: 0.2-0.4 days)
REFERENCE_GAP_MS = 0.3 * DAY_MS
# never shorter than the provisional half-lives: on streams of ten events a day, half-lives of 6 and 42 hours made
# the rates so noisy that stable users moved 20 times each (evaluate's `rare` world: 19.4 moves per stable user
# against 1.7 with 1 and 7 days); how soon a busy user counts as lapsed follows the rhythm anyway (dormancy)
MIN_FACTOR = 1.0
MAX_FACTOR = 2.0**10  # half-lives of about 3 and 20 years at the slowest
MEMORY = 5000  # the newest samples the rhythm is measured on


@dataclass(frozen=True, slots=True)
class _Seen:
    repeats: int  # events after the first
    exposure: float  # ms from the first event to the sample's time
    mean_gap: float  # ms; 0 without repeats


class Rhythm:
    """The newest sampled users' gaps between events."""

    def __init__(self) -> None:
        self._seen: deque[_Seen] = deque(maxlen=MEMORY)

    def add(self, state: UserState, t: int) -> None:
        repeats = max(0, state.n - 1)
        gap = (state.last_ts - state.first_ts) / repeats if repeats else 0.0
        self._seen.append(_Seen(repeats, max(0, t - state.first_ts), gap))

    def median_gap_ms(self) -> float:
        """The median of the users' mean gaps (users with two events or more; 0 when none)."""
        gaps = sorted(s.mean_gap for s in self._seen if s.repeats)
        return gaps[len(gaps) // 2] if gaps else 0.0

    def pooled_gap_ms(self) -> float:
        """Time since the users' first events over their repeat events (0 when nobody repeated)."""
        repeats = sum(s.repeats for s in self._seen)
        return sum(s.exposure for s in self._seen) / repeats if repeats else 0.0


def learned_half_lives(provisional: tuple[float, ...], gap_ms: float) -> tuple[float, ...]:
    """The provisional half-lives scaled by the power of two that best matches ``gap_ms`` to the reference gap
    (the provisional ones when nothing was measured)."""
    if gap_ms <= 0:
        return provisional
    factor = 2.0 ** round(math.log2(gap_ms / REFERENCE_GAP_MS))
    factor = min(MAX_FACTOR, max(MIN_FACTOR, factor))
    return tuple(h * factor for h in provisional)
