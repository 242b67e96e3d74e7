"""One user's state and the feature math that updates it.

All times are event times in epoch milliseconds; the wall clock never enters here. Every decayed quantity is kept
"as of" ``ref_ts``: counts ``c`` with half-life ``H`` are multiplied by ``2 ** (-(t - ref_ts) / H)`` when time
moves to ``t``. An out-of-order event older than ``ref_ts`` adds its already-decayed weight instead of 1, so the
result does not depend on arrival order.
"""

from __future__ import annotations

import math
from typing import Any

from worker.events.ingest import UserEvent
from worker.events.timefmt import utc_offset_ms

OTHER = "~other"  # bucket for event types beyond a user's tracked ones
_LN2 = math.log(2.0)
_HOUR_MS = 3_600_000
_DAY_MS = 86_400_000
_KEYED = 4096  # source partitions whose fence key (the partition as a string) is made once
_PARTITION_KEYS = [str(p) for p in range(_KEYED)]


# the attributes of a state (a compiled core keeps them in fixed slots of its own)
_SLOTS = (
    "context",
    "daypart",
    "due",
    "first_ts",
    "half_lives",
    "history",
    "last_session",
    "last_ts",
    "max_gap",
    "model_version",
    "n",
    "offsets",
    "opted_out",
    "origin",
    "pending",
    "pending_n",
    "rates",
    "ref_ts",
    "rule_segments",
    "rule_seq",
    "segment",
    "segment_since",
    "seq",
    "sessions",
    "silence_step",
    "source",
    "spend",
    "value_total",
    "weekend",
)


class UserState:
    """Everything the worker keeps for one user (serialised with :meth:`to_fields`)."""

    __slots__ = _SLOTS

    def __init__(self, n_half_lives: int = 0) -> None:
        self.n = 0  # events applied
        self.first_ts = 0
        self.last_ts = 0  # newest event time
        self.max_gap = 0  # longest gap between an event and the newest one before it, as they arrived
        self.ref_ts = 0  # time the decayed values below are expressed at
        # the half-lives the decayed values are kept under; None: the provisional ones (Settings.half_lives_ms)
        self.half_lives: tuple[float, ...] | None = None
        self.rates: dict[str, list[float]] = {}  # event type -> decayed counts, one per half-life
        self.spend = [0.0] * n_half_lives  # decayed sums of `value`
        self.value_total = 0.0
        self.sessions = 0.0  # decayed session starts (slowest half-life)
        self.last_session: str | None = None
        self.daypart = [0.0, 0.0, 0.0, 0.0]  # night, morning, afternoon, evening (local time; slowest half-life)
        self.weekend = 0.0
        self.context: dict[str, str] = {}
        self.offsets: dict[str, int] = {}  # source partition -> last applied offset (the dedupe fence)
        self.source = [0, 0]  # [source partition, offset] of the last applied record
        # persona assignment
        self.segment: str | None = None
        self.segment_since = 0
        self.pending: str | None = None
        self.pending_n = 0
        self.seq = 0  # number of changes emitted
        self.model_version = -1
        self.silence_step = 0  # unused since checks are planned from the silence itself; kept in the wire layout
        self.due = 0  # event time of the next silence re-evaluation (0 = none)
        # the newest segment changes, oldest first: [sequence, from, to, changed_at, trigger, [[feature, direction]..]]
        self.history: list[list[Any]] = []
        self.rule_segments: list[str] = []  # the custom (rule) segments the user is in, sorted
        self.rule_seq = 0  # membership events emitted (a chain of its own, beside the persona changes')
        # event time of the profile's first applied event: part of its change ids, so that the chain of a profile
        # started after an erasure or a consent withdrawal never repeats an id of the chain before it
        self.origin = 0
        self.opted_out = False  # consent withdrawn: the state is only this marker (stored as such, see wire)

    @classmethod
    def marker(cls) -> UserState:
        """The state of a user who withdrew consent: nothing but the fact."""
        state = cls(0)
        state.opted_out = True
        return state

    # --- serialisation: the positional field list (JSON: training samples, and legacy changelog records) -----
    def to_fields(self) -> list[Any]:
        return [getattr(self, name) for name in _FIELDS]

    @classmethod
    def from_fields(cls, fields: list[Any]) -> UserState:
        state = cls()
        missing = len(_FIELDS) - len(fields)
        if 0 < missing <= len(_ADDED):  # written before the newest fields existed
            fields = [*fields, *(default() for _, default in _ADDED[len(_ADDED) - missing :])]
        half_lives = fields[_HALF_LIVES_AT] if len(fields) == len(_FIELDS) else None
        if half_lives is not None:  # a JSON list; the attribute is a tuple (a compiled core checks)
            fields = [*fields[:_HALF_LIVES_AT], tuple(half_lives), *fields[_HALF_LIVES_AT + 1 :]]
        for name, value in zip(_FIELDS, fields, strict=True):
            setattr(state, name, value)
        state.opted_out = False
        state.origin = state.origin or state.first_ts
        return state

    # --- dedupe fence --------------------------------------------------------------------------------
    def seen(self, partition: int, offset: int) -> bool:
        """True when the record at ``offset`` of source ``partition`` is already applied."""
        last = self.offsets.get(_PARTITION_KEYS[partition] if partition < _KEYED else str(partition))
        return last is not None and offset <= last

    def fence(self, partition: int, offset: int) -> None:
        key = _PARTITION_KEYS[partition] if partition < _KEYED else str(partition)
        if self.offsets.get(key, -1) < offset:
            self.offsets[key] = offset
        source = self.source
        source[0], source[1] = partition, offset

    @property
    def slow_total(self) -> float:
        return sum(r[-1] for r in self.rates.values())


# the JSON form's field order: the older fields, then those added since, oldest first (a record without some of
# them still reads: they take these defaults)
_ADDED: tuple[tuple[str, Any], ...] = (
    ("history", list),
    ("rule_segments", list),
    ("rule_seq", int),
    ("origin", int),
    ("max_gap", int),
    ("half_lives", lambda: None),
)
_NOT_WIRED = ("opted_out",)  # a marker has a form of its own
_FIELDS = (
    *(s for s in _SLOTS if s not in dict(_ADDED) and s not in _NOT_WIRED),
    *(name for name, _ in _ADDED),
)
_HALF_LIVES_AT = _FIELDS.index("half_lives")


def local_hour_weekday(ts: int, timezone: str | None) -> tuple[int, int]:
    """Hour (0-23) and weekday (Monday 0) of ``ts`` in ``timezone`` (UTC when unknown)."""
    local = ts + utc_offset_ms(timezone, ts)
    return (local // _HOUR_MS) % 24, (local // _DAY_MS + 3) % 7  # 1970-01-01 was a Thursday


def decay_factors(dt_ms: float, half_lives_ms: tuple[float, ...]) -> list[float]:
    return [math.exp(-_LN2 * dt_ms / h) for h in half_lives_ms]


def advance(state: UserState, t: int, half_lives_ms: tuple[float, ...]) -> None:
    """Express every decayed value at time ``t`` (no-op when ``t`` is not newer than ``ref_ts``)."""
    dt = t - state.ref_ts
    if dt <= 0:
        return
    if state.ref_ts == 0:
        state.ref_ts = t
        return
    if len(half_lives_ms) == 2:  # the default two half-lives, written out (per event: a loop costs twice the products)
        h0, h1 = half_lives_ms
        f0 = math.exp(-_LN2 * dt / h0)  # as decay_factors computes them
        slow = f1 = math.exp(-_LN2 * dt / h1)
        for r in state.rates.values():
            r[0] *= f0
            r[1] *= f1
        state.spend[0] *= f0
        state.spend[1] *= f1
    else:
        f = decay_factors(dt, half_lives_ms)
        slow = f[-1]
        for r in state.rates.values():
            for i, fi in enumerate(f):
                r[i] *= fi
        spend = state.spend
        for i, fi in enumerate(f):
            spend[i] *= fi
    state.sessions *= slow
    state.weekend *= slow
    dp = state.daypart
    dp[0] *= slow
    dp[1] *= slow
    dp[2] *= slow
    dp[3] *= slow
    state.ref_ts = t


def apply_event(
    state: UserState,
    ev: UserEvent,
    half_lives_ms: tuple[float, ...],
    max_types: int,
    session_gap_ms: int,
) -> None:
    """Fold one valid event into the user's state (the caller has checked the dedupe fence)."""
    t = ev.ts
    advance(state, t, half_lives_ms)
    # weight of this event at the reference time: 1 when in order, decayed when late
    in_order = t >= state.ref_ts
    w = (1.0,) * len(half_lives_ms) if in_order else decay_factors(state.ref_ts - t, half_lives_ms)
    slow_w = w[-1]

    rates = state.rates
    key = ev.event_type
    r = rates.get(key)
    if r is None:
        if len(rates) - (OTHER in rates) >= max_types:
            _fold_smallest(rates)
        rates[key] = list(w)
    elif in_order and len(r) == 2:  # the default two half-lives, written out
        r[0] += 1.0
        r[1] += 1.0
    else:
        for i, wi in enumerate(w):
            r[i] += wi

    value = ev.value
    if value is not None:
        state.value_total += value
        spend = state.spend
        for i, wi in enumerate(w):
            spend[i] += value * wi

    # sessions: an explicit session id change, or a gap of inactivity, starts a new one
    gap = state.n == 0 or t - state.last_ts > session_gap_ms
    if ev.session_id is not None:
        if ev.session_id != state.last_session:
            state.sessions += slow_w
            state.last_session = ev.session_id
    elif gap and t >= state.last_ts:
        state.sessions += slow_w
        state.last_session = None

    if ev.context:
        state.context.update(ev.context)
    hour, weekday = local_hour_weekday(t, state.context.get("timezone"))
    state.daypart[hour // 6] += slow_w
    if weekday >= 5:
        state.weekend += slow_w

    if state.n == 0:
        state.origin = t
    if state.n == 0 or t < state.first_ts:
        state.first_ts = t
    if t > state.last_ts:
        if state.n and t - state.last_ts > state.max_gap:  # (a late event that splits a gap leaves it as it was)
            state.max_gap = t - state.last_ts
        state.last_ts = t
    state.n += 1


def _fold_smallest(rates: dict[str, list[float]]) -> None:
    """Keep the per-user type map bounded: merge the least active named type into ``OTHER``."""
    victim = min((k for k in rates if k != OTHER), key=lambda k: rates[k][-1])
    counts = rates.pop(victim)
    other = rates.setdefault(OTHER, [0.0] * len(counts))
    for i, c in enumerate(counts):
        other[i] += c


def spread_weight(span_ms: float, half_life_ms: float) -> float:
    """Mean weight, as of the end of ``span_ms``, of events spread evenly over it under ``half_life_ms``."""
    x = _LN2 * span_ms / half_life_ms
    return 1.0 if x < 1e-9 else (1.0 - math.exp(-x)) / x


def to_scale(state: UserState, provisional: tuple[float, ...], target: tuple[float, ...]) -> None:
    """Bring ``state`` to half-lives ``target`` (see :func:`rescale`) and mark it so; ``provisional`` are the
    half-lives an unmarked state is kept under."""
    current = state.half_lives or provisional
    if current != target:
        rescale(state, current, target)
    state.half_lives = None if target == provisional else target


def rescale(state: UserState, old: tuple[float, ...], new: tuple[float, ...]) -> None:
    """Express the decayed values kept under half-lives ``old`` under ``new`` instead (a model that learned the
    stream's time scales), in place and without the events.

    A half-life in both is copied. Any other is estimated from its old neighbours, each re-weighted as if the
    user's events were spread evenly between the first event and ``ref_ts`` (exact for a steady user): between
    two old half-lives, the geometric interpolation of both estimates (which recovers a sparse user's last event
    from the faster one and the rest from the slower); beyond them, the nearest one's. A half-life longer than
    any old one never gives more than the user has ever done (the event count, shared out by the slowest counts,
    and the value total), so a recent burst is not extrapolated backwards. The quantities kept under the slowest
    half-life only (sessions, daypart, weekend) scale with the slowest counts."""
    if old == new:
        return
    span = max(0, state.ref_ts - state.first_ts)
    slow_total = state.slow_total
    plan = [_rung(span, old, h) for h in new]
    for etype, counts in state.rates.items():
        cap = state.n * counts[-1] / slow_total if slow_total > 0 else 0.0
        state.rates[etype] = [_convert(counts, terms, cap) for terms in plan]
    state.spend = [_convert(state.spend, terms, max(0.0, state.value_total)) for terms in plan]
    f = state.slow_total / slow_total if slow_total > 0 else 1.0
    state.sessions *= f
    state.weekend *= f
    state.daypart = [x * f for x in state.daypart]


def _rung(span: float, old: tuple[float, ...], h: float) -> tuple[tuple[int, float, float], ...] | None:
    """How new half-life ``h`` is derived: (old index, steady-user ratio, weight) terms; None when beyond the
    slowest old half-life (then capped by the totals)."""
    order = sorted(range(len(old)), key=lambda j: old[j])
    if h in old:
        return ((old.index(h), 1.0, 1.0),)
    below = [j for j in order if old[j] < h]
    above = [j for j in order if old[j] > h]
    if below and above:
        lo, hi = below[-1], above[0]
        w = math.log(h / old[lo]) / math.log(old[hi] / old[lo])
        return ((lo, _steady(span, old[lo], h), 1.0 - w), (hi, _steady(span, old[hi], h), w))
    if above:
        return ((above[0], _steady(span, old[above[0]], h), 1.0),)
    return None if not below else ((below[-1], _steady(span, old[below[-1]], h), -1.0),)


def _steady(span: float, old_h: float, new_h: float) -> float:
    return spread_weight(span, new_h) / spread_weight(span, old_h)


def _convert(values: list[float], terms: tuple[tuple[int, float, float], ...] | None, cap: float) -> float:
    assert terms is not None
    if len(terms) == 1:
        i, ratio, weight = terms[0]
        v = values[i] * ratio
        return min(v, cap) if weight < 0 else v  # a negative weight marks a half-life beyond the old ones
    estimates = [(values[i] * ratio, w) for i, ratio, w in terms]
    if any(v <= 0.0 for v, _ in estimates):
        return sum(v * w for v, w in estimates)
    return math.exp(sum(w * math.log(v) for v, w in estimates))


def features_at(state: UserState, t: int, half_lives_ms: tuple[float, ...]) -> dict[str, Any]:
    """Human-readable features of the user as of event time ``t`` (for the API and reasons)."""
    dt = max(0, t - state.ref_ts)
    f = decay_factors(dt, half_lives_ms)
    slow = f[-1]
    days = [h / _DAY_MS for h in half_lives_ms]
    dp_total = sum(state.daypart) or 1.0
    slow_total = state.slow_total
    return {
        "event_count": state.n,
        "days_since_last_event": round(max(0, t - state.last_ts) / _DAY_MS, 4),
        "monetary_total": state.value_total,
        "decayed_counts": {
            etype: {f"{d:g}d": round(c * fi, 4) for c, fi, d in zip(counts, f, days, strict=True)}
            for etype, counts in state.rates.items()
        },
        "decayed_spend": {f"{d:g}d": round(s * fi, 4) for s, fi, d in zip(state.spend, f, days, strict=True)},
        "decayed_sessions": round(state.sessions * slow, 4),
        "daypart_share": dict(
            zip(
                ("night", "morning", "afternoon", "evening"),
                (round(x / dp_total, 4) for x in state.daypart),
                strict=True,
            )
        ),
        "weekend_share": round(state.weekend / slow_total, 4) if slow_total else 0.0,
        "context": dict(state.context),
    }
