"""When is a silent user dormant? Relative to the user's own rhythm, unless the operator fixes one silence for all.

A user's usual gap between events is estimated from the state's first and last event time and event count, shrunk
towards the stream's typical gap (learned by the trainer, carried by the model snapshot) by a couple of pseudo-gaps,
so two purchases on one day do not make a customer "daily". The user is dormant once silent for ``gaps`` usual
gaps, for ``LONGEST_GAPS`` times the longest silence the user already came back from (a user active on weekends
only is not lapsed on Friday), and never sooner than ``floor``; on the way, after ``lapsing_share`` of that
silence, the user is *lapsing* (the time to win them back): a user of ten events a day is lapsed after a few
quiet days, a quarterly buyer not after a quiet month. A state built under one model's typical gap carries to the
next unchanged: nothing here depends on the model but the typical gap.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.features.state import UserState

DAY_MS = 86_400_000
PRIOR_WEIGHT = 2.0  # pseudo-gaps of the stream's typical gap in a user's estimate
LONGEST_GAPS = 2.0  # a silence twice the longest the user came back from is a lapse
LAPSE_LONGEST = 1.25  # and a quarter more than it makes the user lapsing
# the stream's typical gap before the trainer measured one: with the default 8 gaps, 14 days for a new user
DEFAULT_TYPICAL_GAP_MS = 1.75 * DAY_MS


@dataclass(frozen=True)
class Dormancy:
    fixed_ms: int | None  # the operator's DORMANT_AFTER_DAYS: one silence for every user (0: nobody goes dormant)
    gaps: float  # DORMANT_AFTER_GAPS: silence, in the user's usual gaps, that makes the user dormant
    floor_ms: int  # DORMANT_MIN_DAYS: never dormant sooner
    typical_gap_ms: float  # the stream's typical gap between a user's events
    checks_ms: tuple[int, ...] = ()  # SILENCE_CHECKS_DAYS: silences at which the model re-evaluates the user
    lapsing_share: float = 0.0  # LAPSING_SHARE: share of the dormancy silence after which the user is lapsing
    lapsing_floor_ms: int = 0  # DORMANT_MIN_DAYS: nobody is lapsing sooner either

    def __post_init__(self) -> None:
        object.__setattr__(self, "checks_ms", tuple(sorted(self.checks_ms)))

    def after_ms(self, state: UserState) -> int:
        """The silence after which the user is dormant (0: never)."""
        if self.fixed_ms is not None:
            return self.fixed_ms
        # the user's usual gap: the span of their events over their gaps, with the pseudo-gaps of the typical one
        usual = (max(0, state.last_ts - state.first_ts) + PRIOR_WEIGHT * self.typical_gap_ms) / (
            max(0, state.n - 1) + PRIOR_WEIGHT
        )
        return max(self.floor_ms, int(self.gaps * usual), int(LONGEST_GAPS * state.max_gap))

    def lapsing_ms(self, state: UserState, after_ms: int) -> int:
        """The silence after which the user is lapsing, given the dormancy silence ``after_ms`` (0: no lapsing
        stage): ``lapsing_share`` of it, never before the user has been silent for longer than the longest silence
        they came back from (a weekend-only user is not lapsing every Friday), nor before ``lapsing_floor_ms`` (a
        user who goes dormant after the minimum silence has no lapsing stage); with the operator's fixed silence,
        its share for everyone."""
        if not after_ms or not self.lapsing_share:
            return 0
        share = int(self.lapsing_share * after_ms)
        if self.fixed_ms is not None:  # the operator's one silence for all: its share, for all
            return share
        lapse = max(share, int(LAPSE_LONGEST * state.max_gap), self.lapsing_floor_ms)
        return lapse if lapse < after_ms else 0

    def next_check(self, state: UserState, silence_ms: int) -> int:
        """Event time of the user's next silence check after ``silence_ms`` of silence (0: none left): the model's
        re-evaluations and the lapsing threshold below the dormancy threshold, then the threshold."""
        limit = self.after_ms(state)
        lapse = self.lapsing_ms(state, limit)
        due = 0  # the earliest check after the silence and before the limit (checks_ms is sorted)
        for check in self.checks_ms:
            if silence_ms < check and (not limit or check < limit):
                due = check
                break
        if lapse and silence_ms < lapse and (not limit or lapse < limit) and (not due or lapse < due):
            due = lapse
        if due:
            return state.last_ts + due
        return state.last_ts + limit if limit and silence_ms < limit else 0
