"""The per-batch core of the worker, free of Faust: records in → state updates, change events, dead letters.

The Faust agents (``worker.app``) feed batches of raw records; everything here is plain Python and numpy so it is
unit-tested without a broker or an event loop. One batch:

1. decode and validate each record (bad ones become dead letters), route it by ``user_id`` (records whose user
   lives on another partition are handed back for forwarding), skip records the user's offset fence has already
   seen, fold the event into the user's features;
2. evaluate every applied event against the current model in one vectorised call, then run each user's
   hysteresis in event order, so the outcome does not depend on how records were batched;
3. re-evaluate users whose silence timer the partition's watermark has passed (dormancy included).

Every known user is in a segment: ``new`` from the first event (a ``null → new`` change) until the model places
them once they have ``min_events`` events, a persona, then ``lapsing`` and ``dormant`` as their silence grows
(whether or not they ever had a persona; see worker.changes.dormancy), and back.

Users can leave: an erasure request (a record of kind ``erasure``) deletes the user's state, an event withdrawing
consent replaces it by a marker. Either way the user (in a segment since the first event, ``new`` at least) gets one
final change with ``to_segment`` null, and leaves the custom segments. Events after that start a fresh profile
(after a withdrawal, only once an event gives consent again).
"""

from __future__ import annotations

import hashlib
import os
import random
from collections import Counter
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from worker import codec
from worker.changes.dormancy import DAY_MS, DEFAULT_TYPICAL_GAP_MS, Dormancy
from worker.changes.hysteresis import decide, decide_model_update
from worker.changes.kept import KeptStates
from worker.changes.silence import SilenceIndex
from worker.clustering.snapshot import Displacement, ModelSnapshot
from worker.errors import InvalidEvent
from worker.events.ingest import ErasureRequest, EventParser, UserEvent
from worker.events.timefmt import format_rfc3339, time_zone
from worker.features.state import UserState, apply_event, to_scale
from worker.features.watermark import Watermarks
from worker.features.wire import EncodedStates
from worker.personas.reasons import model_reasons, silence_reason
from worker.personas.registry import DORMANT, LAPSING, NEW, QUIET, RESERVED
from worker.segments.rules import SegmentRule, rule_features
from worker.settings import Settings

HISTORY_REASONS = 2  # reasons kept per change in a user's recent history


@dataclass(slots=True, init=False)
class InputRecord:
    value: bytes | None
    key: bytes | None
    partition: int  # partition it was consumed from
    offset: int
    src_partition: int  # partition of the input topic it first arrived on (differs only when forwarded)
    src_offset: int
    consumed_at: float  # monotonic seconds, for the event→change latency
    kind: str  # "event", or "erasure": a request on the erasure topic (forwarded ones carry it in a header)

    # written out: the generated one is interpreted even in the compiled core, and one is made per consumed record
    def __init__(
        self,
        value: bytes | None,
        key: bytes | None,
        partition: int,
        offset: int,
        src_partition: int,
        src_offset: int,
        consumed_at: float,
        kind: str = "event",
    ) -> None:
        self.value, self.key, self.partition, self.offset = value, key, partition, offset
        self.src_partition, self.src_offset, self.consumed_at, self.kind = src_partition, src_offset, consumed_at, kind


@dataclass(slots=True)
class DeadLetter:
    record: InputRecord
    reason: str
    detail: str


@dataclass
class BatchResult:
    changes: list[tuple[str, bytes, float]] = field(default_factory=list)  # user id, change record, consumed_at
    dead: list[DeadLetter] = field(default_factory=list)
    forward: list[tuple[int, str, InputRecord]] = field(default_factory=list)  # owner partition, user, record
    dirty: dict[str, UserState] = field(default_factory=dict)
    samples: list[bytes] = field(default_factory=list)
    processed: int = 0
    duplicates: int = 0
    partitions: set[int] = field(default_factory=set)
    # per change: from and to ("none" for no segment), event time (ms), trigger
    transitions: list[tuple[str, str, int, str]] = field(default_factory=list)
    # user id, segment, action, the segment-membership record
    memberships: list[tuple[str, str, str, bytes]] = field(default_factory=list)
    erased: set[str] = field(default_factory=set)  # users whose state is to be deleted (tombstones)
    erasures: int = 0  # erasure requests applied
    withdrawals: int = 0  # events that withdrew consent
    excluded: int = 0  # events of users without consent, not applied
    sampled: list[UserState] = field(default_factory=list)  # the state each sample is of (never written out)


@dataclass(slots=True, init=False)
class _Eval:
    user_id: str
    state: UserState
    t: int
    n: int
    trigger: str  # "event", "silence", "model_update", "erased" or "consent_withdrawn"
    source: tuple[int, int]
    consumed_at: float
    quiet: str | None  # a silence that moves the user to `lapsing` or `dormant`: the model is not asked
    row: bytes | None  # the user's raw feature vector (FeatureSpace.packed_row; None for a quiet check)
    cause: Displacement | None  # a model update's: the persona-change event and where it lets the user go

    # written out, as InputRecord's: one is made per event the model is asked about
    def __init__(
        self,
        user_id: str,
        state: UserState,
        t: int,
        n: int,
        trigger: str,
        source: tuple[int, int],
        consumed_at: float,
        quiet: str | None = None,
        row: bytes | None = None,
        cause: Displacement | None = None,
    ) -> None:
        self.user_id, self.state, self.t, self.n, self.trigger = user_id, state, t, n, trigger
        self.source, self.consumed_at, self.quiet, self.row, self.cause = source, consumed_at, quiet, row, cause


class Segmenter:
    def __init__(
        self,
        settings: Settings,
        store: MutableMapping[str, UserState],
        partition_of: Callable[[str], int],
        rng_seed: int = 0,
        segment_rules: tuple[SegmentRule, ...] = (),
    ) -> None:
        self.settings = settings
        self.segment_rules = segment_rules
        self._rules_by_name = {r.name: r for r in segment_rules}
        self.store = store
        # states kept decoded (a store of encoded states decodes on every read); a store of objects is its own
        self._kept = KeptStates(store, settings.state_cache_users) if isinstance(store, EncodedStates) else None
        self.partition_of = partition_of
        self.parser = EventParser(
            settings.max_event_bytes, int(settings.max_future_seconds * 1000), settings.pseudonym_key
        )
        # training samples carry a keyed digest of the user, never the id: the key lives only in this process
        self._sample_key = os.urandom(16)
        self.provisional = settings.half_lives_ms
        self.half_lives = self.provisional  # the model's, once there is one: every state touched is brought to them
        self._scale_mark: tuple[float, ...] | None = None  # how a state under them is marked (None: provisional)
        self.dormancy = self._dormancy(None)
        self.session_gap_ms = int(settings.session_gap_seconds * 1000)
        self.watermarks = Watermarks(int(settings.lateness_seconds * 1000))
        self.silence = SilenceIndex()
        self.counts: Counter[str] = Counter()  # users per persona on the partitions this worker owns
        self.model: ModelSnapshot | None = None
        self._rng = random.Random(rng_seed)

    # --- model and ownership -------------------------------------------------------------------------
    def set_model(self, model: ModelSnapshot) -> bool:
        if self.model is not None and model.version <= self.model.version:
            return False
        self.model = model
        self.dormancy = self._dormancy(model)
        self.half_lives = model.space.half_lives_ms
        self._scale_mark = None if self.half_lives == self.provisional else self.half_lives
        return True

    def time_scales(self) -> dict[str, Any]:
        """The time scales in use (for /personas and the logs): half-lives of the decayed rates, whether the
        model learned them, the stream's typical gap and what makes a user dormant."""
        d = self.dormancy
        return {
            "half_lives_days": [round(h / DAY_MS, 4) for h in self.half_lives],
            "half_lives_learned": self.settings.learn_half_lives and self.model is not None,
            "typical_gap_days": round(d.typical_gap_ms / DAY_MS, 4),
            "dormant_after": (
                f"{d.fixed_ms / DAY_MS:g} days of silence"
                if d.fixed_ms is not None
                else f"the longest of {d.floor_ms / DAY_MS:g} days, {d.gaps:g} of the user's usual gaps "
                "(shrunk towards the typical gap) and twice the longest silence the user came back from"
            ),
            "lapsing_after": f"{d.lapsing_share:g} of that" if d.lapsing_share else None,
        }

    def _dormancy(self, model: ModelSnapshot | None) -> Dormancy:
        s = self.settings
        typical = model.typical_gap_ms if model is not None and model.typical_gap_ms > 0 else DEFAULT_TYPICAL_GAP_MS
        # never dormant before the slowest half-life has mostly let go of the user's activity: a quarterly buyer's
        # model (half-lives of months) is not lapsed after a few quiet weeks
        slowest = max(model.space.half_lives_ms if model is not None else self.provisional)
        minimum = int(s.dormant_min_days * DAY_MS)
        floor = max(minimum, int(slowest))
        checks = s.silence_checks_ms
        return Dormancy(s.dormant_after_ms, s.dormant_after_gaps, floor, typical, checks, s.lapsing_share, minimum)

    def rebuild(self, owned: set[int], watermarks: dict[int, int]) -> None:
        """Re-derive in-memory indexes (silence timers, persona counts) from the store after (re)assignment."""
        self.silence.clear()
        self.counts.clear()
        if self._kept is not None:  # the store was read again from the changelog
            self._kept.clear()
        self.watermarks.forget(set(self.watermarks.max_ts))
        for p, ts in watermarks.items():
            if p in owned:
                self.watermarks.observe(p, ts)
        for uid, _, segment, due in self._summaries():
            p = self.partition_of(uid)
            if p not in owned:
                continue
            if segment is not None:
                self.counts[segment] += 1
            if due:
                self.silence.schedule(p, uid, due)

    # --- the states' writes ----------------------------------------------------------------------------
    def defer_writes(self) -> None:
        """The caller writes the store when it takes the states batches changed (:meth:`take_unwritten`), not
        after every batch; until then they are read from the kept ones (a store of encoded states only)."""
        if self._kept is None:
            raise TypeError("deferred writes need a store of encoded states (worker.features.wire.EncodedStates)")
        self._kept.defer()

    def take_unwritten(self, user_ids: Iterable[str] | None = None) -> dict[str, UserState | None]:
        """The newest state of each user (all, or of ``user_ids``) changed since it was last taken (None: erased),
        to be written now."""
        return {} if self._kept is None else self._kept.take_unwritten(user_ids)

    @property
    def unwritten(self) -> int:
        """Users whose newest state is not written to the store yet."""
        return 0 if self._kept is None else self._kept.unwritten

    def newest(self, uid: str) -> UserState | None:
        """The user's newest state, for a reader beside the batches (the store's may be older)."""
        return self.store.get(uid) if self._kept is None else self._kept.peek(uid)

    def _summaries(self) -> Iterable[tuple[str, int, str | None, int]]:
        """(user id, event count, segment, due) of every stored user: from the encoded form when the store keeps
        states encoded (a scan of a million users decodes only these fields)."""
        if isinstance(self.store, EncodedStates):
            return self.store.summaries()
        return ((uid, st.n, st.segment, st.due) for uid, st in self.store.items())

    # --- the batch -----------------------------------------------------------------------------------
    def process(self, records: Iterable[InputRecord], now_ms: int, now_mono: float) -> BatchResult:
        res = BatchResult()
        evals: list[_Eval] = []
        model = self.model
        space = model.space if model else None
        s = self.settings
        wiped: set[str] = set()  # erased in this batch: not to be read from the store again
        for rec in records:
            ev = self._read(res, rec, now_ms)
            if ev is None:
                continue
            uid = ev.user_id
            owner = self.partition_of(uid)
            if owner != rec.partition:
                res.forward.append((owner, uid, rec))
                continue
            state = self._current(res, uid, wiped)
            if isinstance(ev, ErasureRequest):
                self._leave(res, uid, owner, state, ev.requested_at, "erased", rec, wiped)
                continue
            if ev.consent is False:
                if state is None or not state.opted_out:
                    self._leave(res, uid, owner, state, ev.ts, "consent_withdrawn", rec, wiped)
                continue
            if state is not None and state.opted_out:
                if not ev.consent:  # no consent given again: nothing of the event is kept
                    res.excluded += 1
                    continue
                state = None
            if state is None:
                state = UserState(len(self.half_lives))
                state.half_lives = self._scale_mark
            elif state.seen(rec.src_partition, rec.src_offset):
                res.duplicates += 1
                continue
            elif state.due and state.due <= self.watermarks.get(owner):
                # the watermark passed a silence check of the user before this event: the batch's part ends here,
                # as a batch ending here would, so the outcome does not depend on where batches end (a
                # re-application after a crash reads other batches than the first run)
                res.partitions.add(owner)
                evals = self._close_part(res, evals, now_mono, wiped)
                state = self._current(res, uid, wiped)
                assert state is not None
            res.erased.discard(uid)
            apply_event(state, ev, self.half_lives, s.max_types_per_user, self.session_gap_ms)
            state.fence(rec.src_partition, rec.src_offset)
            if self.segment_rules:
                self._check_rules(res, uid, state, state.last_ts)
            res.dirty[uid] = state
            res.processed += 1
            res.partitions.add(owner)
            self.watermarks.observe(owner, ev.ts)
            if state.segment is None or (state.segment in QUIET and state.n < s.min_events):
                # the first event of a profile (the user is known), or a quiet user back with too few events for
                # the model: segment `new`
                self._to_new(res, uid, state, rec)
            # an event resets the silence clock
            state.due = self.dormancy.next_check(state, 0)
            if state.n >= s.min_events:
                if self._want_sample(state.n):
                    self._sample(res, uid, state, state.last_ts)
                if space is not None:
                    t = state.last_ts
                    source = (rec.src_partition, rec.src_offset)
                    evals.append(
                        _Eval(uid, state, t, state.n, "event", source, rec.consumed_at, row=space.packed_row(state, t))
                    )
        self._close_part(res, evals, now_mono, wiped)
        return self._done(res)

    def _close_part(self, res: BatchResult, evals: list[_Eval], now_mono: float, wiped: set[str]) -> list[_Eval]:
        """The end of a batch (or of a part of it): silence checks the watermarks passed, then every evaluation
        in order; returns the next part's (empty) evaluations."""
        self._reset_silence(res)
        self._collect_silent(res, evals, now_mono, wiped)
        if wiped:  # what the batch computed for a user before an erasure or a withdrawal goes with the state
            evals = [e for e in evals if res.dirty.get(e.user_id) is e.state]
            live = {id(state) for state in res.dirty.values() if not state.opted_out}
            keep = [i for i, state in enumerate(res.sampled) if id(state) in live]
            res.samples = [res.samples[i] for i in keep]
            res.sampled = [res.sampled[i] for i in keep]
        if evals:
            self._evaluate(self.model, evals, res)
        return []

    def _done(self, res: BatchResult) -> BatchResult:
        """The batch's result; the caller writes its states (and deletes the erased) before the next batch."""
        if self._kept is not None:
            self._kept.wrote(res.dirty, res.erased)
        return res

    def _reset_silence(self, res: BatchResult) -> None:
        """The next silence check of each user with events in the batch, indexed."""
        for uid, state in res.dirty.items():
            if state.due:
                self.silence.schedule(self.partition_of(uid), uid, state.due)

    def _read(self, res: BatchResult, rec: InputRecord, now_ms: int) -> UserEvent | ErasureRequest | None:
        """The record decoded as its kind says, or None when it is dead-lettered."""
        try:
            if rec.kind == "erasure":
                return self.parser.parse_erasure(rec.value, now_ms)
            return self.parser.parse(rec.value, now_ms)
        except InvalidEvent as exc:
            res.dead.append(DeadLetter(rec, exc.reason, exc.detail))
        except Exception as exc:  # never let one record stop the stream
            res.dead.append(DeadLetter(rec, "internal_error", f"{type(exc).__name__}: {exc}"[:200]))
        return None

    def _current(self, res: BatchResult, uid: str, wiped: set[str]) -> UserState | None:
        """The user's state as of this point of the batch (one erased or withdrawn in it is not read back)."""
        state = res.dirty.get(uid)
        if state is None and uid not in wiped:
            state = self._load(uid)
        return state

    def _load(self, uid: str) -> UserState | None:
        """The stored state, under the half-lives in use (kept under a model's older ones: converted)."""
        state = self.store.get(uid) if self._kept is None else self._kept.get(uid)
        if state is not None and state.half_lives != self._scale_mark and not state.opted_out:
            to_scale(state, self.provisional, self.half_lives)
        return state

    def _leave(
        self,
        res: BatchResult,
        uid: str,
        owner: int,
        state: UserState | None,
        t: int,
        why: str,
        rec: InputRecord,
        wiped: set[str],
    ) -> None:
        """A user leaves segmentation (``erased``, or ``consent_withdrawn``): a final change to no persona when the
        user had one, exits from the custom segments; the state is deleted (a tombstone) or becomes the marker."""
        if state is not None and not state.opted_out:
            if state.segment is not None:
                before = state.segment
                e = _Eval(uid, state, t, state.n, why, (rec.src_partition, rec.src_offset), rec.consumed_at)
                self._emit(res, state.model_version, e, before, None, 1.0, [])
            if state.rule_segments:
                self._set_rule_segments(res, uid, state, t, [], {})
        wiped.add(uid)
        res.partitions.add(owner)
        if why == "erased":
            res.dirty.pop(uid, None)
            res.erased.add(uid)
            res.erasures += 1
        else:
            res.dirty[uid] = UserState.marker()
            res.erased.discard(uid)
            res.withdrawals += 1

    def _to_new(self, res: BatchResult, uid: str, state: UserState, rec: InputRecord) -> None:
        """A move to ``new`` as of the user's newest event: ``null → new`` at a profile's first event, or from
        ``lapsing``/``dormant`` for a user back with fewer than ``min_events`` events.

        No model decides it, so it carries the model version of the user's previous change (0 at a first event):
        what the state holds, not which model the worker had adopted when the event was applied. A re-application
        after a crash (the change delivered, the state not yet) re-emits it byte for byte even when a model was
        adopted in between."""
        e = _Eval(uid, state, state.last_ts, state.n, "event", (rec.src_partition, rec.src_offset), rec.consumed_at)
        before = state.segment
        state.pending, state.pending_n = None, 0
        self._emit(res, max(0, state.model_version), e, before, NEW, 1.0, [])
        self._remember(state, before, NEW, e, [])

    def _sample(self, res: BatchResult, uid: str, state: UserState, t: int) -> None:
        key = hashlib.blake2b(uid.encode("utf-8", "surrogatepass"), key=self._sample_key, digest_size=8).hexdigest()
        res.samples.append(codec.dumps([key, state.to_fields(), t]))
        res.sampled.append(state)

    def sweep(self, owned: set[int], now_mono: float, waiting: set[int] | None = None, since: int = 0) -> BatchResult:
        """What a model just adopted (or partitions just gained) changes for the owned users, at once:

        - users waiting for a first persona (on the ``waiting`` partitions, all of ``owned`` by default) get one,
          evaluated as of their newest event, exactly as if the model had been there then;
        - members of personas a version after ``since`` split, merged or retired, and of ids the model no longer
          has, are placed again by it (:meth:`_displaced`): a change with trigger ``model_update`` whose ``cause``
          is the persona-change event, so nobody waits for their own next event in a persona that is gone;
        - then the silence checks the partitions' watermarks have already passed (a log replayed before the first
          model was fitted has no batch left to run them: its customers silent for months would keep the persona of
          their last purchase until they came back).

        ``since`` only narrows which personas are looked at (the model this worker used before, whose sweep placed
        the rest): who moves is decided by the model and each user's state alone."""
        res = BatchResult()
        model = self.model
        if model is None:
            return res
        waiting = owned if waiting is None else waiting
        causes = self._displaced(model, since)
        if not waiting and not causes:
            return res
        evals: list[_Eval] = []
        for uid, n, segment, _ in self._summaries():
            if segment in causes:
                e = self._placed_again(uid, model, causes[segment], owned, now_mono)
            elif segment in (None, NEW) and n >= self.settings.min_events and self.partition_of(uid) in waiting:
                e = self._first_persona(uid, model, now_mono)
            else:
                continue
            if e is not None:
                res.dirty[uid] = e.state
                evals.append(e)
        res.partitions.update(owned)
        self._collect_silent(res, evals, now_mono, set())
        if evals:
            self._evaluate(model, evals, res)
        return self._done(res)

    def _displaced(self, model: ModelSnapshot, since: int) -> dict[str, Displacement]:
        """The personas of owned users that ``model`` may place again, each with the event that displaced its
        members: after version ``since`` (``ModelSnapshot.displaced``), or gone from the model (when it went in a
        version too old to be kept: no event, this version)."""
        live = set(model.persona_ids)
        out: dict[str, Displacement] = {}
        for segment, users in self.counts.items():
            if users <= 0 or segment in RESERVED:
                continue
            d = model.displaced.get(segment)
            if segment not in live:
                out[segment] = Displacement(d.version if d else model.version, d.event_id if d else None)
            elif d is not None and d.version > since:
                out[segment] = d
        return out

    def _first_persona(self, uid: str, model: ModelSnapshot, now_mono: float) -> _Eval:
        state = self._load(uid)
        assert state is not None
        t, source = state.last_ts, (state.source[0], state.source[1])
        # silence as of the newest event again: before a model, checks were only put off
        state.due = self.dormancy.next_check(state, 0)
        if state.due:
            self.silence.schedule(self.partition_of(uid), uid, state.due)
        return _Eval(uid, state, t, state.n, "event", source, now_mono, row=model.space.packed_row(state, t))

    def _placed_again(
        self, uid: str, model: ModelSnapshot, cause: Displacement, owned: set[int], now_mono: float
    ) -> _Eval | None:
        """A displaced persona's member, evaluated when the version that last placed the user (kept in its state)
        is older than the displacement, or the persona is gone: a sweep run again after a restart passes over whom
        the first one placed. As of the model's time unless the user's events or silence check are later (changes
        stay in time order)."""
        if self.partition_of(uid) not in owned:
            return None
        state = self._load(uid)
        if state is None or (state.model_version >= cause.version and state.segment in model.persona_ids):
            return None
        t = max(state.last_ts, min(model.as_of_ms, state.due) if state.due else model.as_of_ms)
        source = (state.source[0], state.source[1])
        e = _Eval(uid, state, t, state.n, "model_update", source, now_mono, cause=cause)
        e.row = model.space.packed_row(state, t)
        return e

    def _want_sample(self, n: int) -> bool:
        # user-uniform part: at min_events and each doubling after; plus a random share of the rest
        m = self.settings.min_events
        q, r = divmod(n, m)
        return (r == 0 and q & (q - 1) == 0) or self._rng.random() < self.settings.sample_rate

    def _collect_silent(self, res: BatchResult, evals: list[_Eval], now: float, wiped: set[str]) -> None:
        for p in sorted(res.partitions):
            wm = self.watermarks.get(p)
            for uid in self.silence.pop_due(p, wm):
                state = self._current(res, uid, wiped)
                if state is None or not state.due or state.due > wm:
                    continue  # erased, rescheduled by a newer event, or a stale entry
                while state.due and state.due <= wm:  # every check the watermark passed, in order
                    e = self._silence_check(res, uid, state, now)
                    if e is not None:
                        evals.append(e)
                if state.due:
                    self.silence.schedule(p, uid, state.due)

    def _silence_check(self, res: BatchResult, uid: str, state: UserState, now: float) -> _Eval | None:
        """A user's silence check that fell due: the quiet segment the silence calls for (lapsing, dormant), or
        the model's re-evaluation (SILENCE_CHECKS_DAYS); the next check planned (``state.due``)."""
        t = state.due
        # as of now: a newer model's typical gap may have moved the thresholds since the check was planned
        quiet = self._quiet_segment(state, t - state.last_ts)
        state.due = self.dormancy.next_check(state, t - state.last_ts)
        if self.model is None and self.settings.dormant_after_ms is None:
            # the stream's rhythm is not known before the first model: a silence is no lapse yet (a quarterly
            # buyer is not dormant after the provisional two weeks); checked again later
            quiet, state.due = None, t + self.dormancy.floor_ms
        res.dirty[uid] = state
        if self.segment_rules:
            self._check_rules(res, uid, state, t)
        e = _Eval(uid, state, t, state.n, "silence", (state.source[0], state.source[1]), now, quiet)
        if quiet is not None:  # the model is not asked: a user below `min_events` lapses too
            return e if state.segment != quiet and state.segment != DORMANT else None
        if state.n < self.settings.min_events or state.segment in QUIET:
            return None
        self._sample(res, uid, state, t)  # (a quiet user's faded state is no persona to learn)
        if self.model is None:
            return None
        e.row = self.model.space.packed_row(state, t)
        return e

    def _quiet_segment(self, state: UserState, silence_ms: int) -> str | None:
        """``dormant`` or ``lapsing`` when ``silence_ms`` of silence makes the user so (see worker.changes.dormancy)."""
        limit = self.dormancy.after_ms(state)
        if limit and silence_ms >= limit:
            return DORMANT
        lapse = self.dormancy.lapsing_ms(state, limit)
        return LAPSING if lapse and silence_ms >= lapse else None

    def _evaluate(self, model: ModelSnapshot | None, evals: list[_Eval], res: BatchResult) -> None:
        """Each evaluation in order: the model's persona for its row (every row in one vectorised call), or
        ``dormant`` for a dormancy check (no model needed)."""
        s = self.settings
        rows = [e.row for e in evals if e.row is not None]
        if rows:
            assert model is not None
            a = model.assign(model.space.model_units(rows))
            index, margin = a.index.tolist(), a.margin.tolist()
        ids = model.persona_ids if model is not None else ()
        version = model.version if model is not None else 0
        j = -1  # the row of the current evaluation
        for e in evals:
            state = e.state
            if e.quiet is not None:
                if state.segment == e.quiet:
                    continue
                state.pending, state.pending_n = None, 0
                before, after, confidence = state.segment, e.quiet, 1.0
                reasons = silence_reason((e.t - state.last_ts) / DAY_MS)
            else:
                assert model is not None
                j += 1
                if e.cause is None:  # the user's own evaluation
                    moved = decide(
                        state,
                        ids[index[j]],
                        margin[j],
                        n=e.n,
                        min_events=s.min_events,
                        confirmations=s.confirmations,
                        min_margin=s.min_margin,
                    )
                else:
                    moved = self._model_moves(e, ids, version, ids[index[j]], margin[j])
                if moved is None:
                    continue
                (before, after), confidence = moved, margin[j]
                from_index = ids.index(before) if before in ids else None
                reasons = model_reasons(model, a.scaled[j], from_index, index[j])
            self._emit(res, version, e, before, after, confidence, reasons)
            self._remember(state, before, after, e, reasons)

    def _model_moves(
        self, e: _Eval, ids: tuple[str, ...], version: int, candidate: str, margin: float
    ) -> tuple[str | None, str] | None:
        """Whether a model update moves the user (worker.changes.hysteresis.decide_model_update); placed by this
        version all the same when it does not (not evaluated again for it)."""
        state, cause = e.state, e.cause
        assert cause is not None
        to = cause.to if state.segment in ids else ()
        moved = decide_model_update(state, candidate, margin, to=to, min_margin=self.settings.min_margin)
        if moved is None:
            state.model_version = max(state.model_version, version)
        return moved

    def _emit(
        self,
        res: BatchResult,
        version: int,
        e: _Eval,
        before: str | None,
        after: str | None,
        margin: float,
        reasons: list[dict[str, Any]],
    ) -> None:
        """The change record of ``e``'s move and its transition, into ``res``; the user's state and the counts
        follow it."""
        state = e.state
        state.seq += 1
        state.segment = after
        state.segment_since = e.t
        state.model_version = version
        if before is not None:
            self.counts[before] -= 1
        if after is not None:
            self.counts[after] += 1
        record = {
            "schema": "segment-change.v1",
            "event_id": change_id(e.user_id, state.seq, before, after, state.origin),
            "user_id": e.user_id,
            "from_segment": before,
            "to_segment": after,
            "from_segment_name": self.segment_name(before),
            "to_segment_name": self.segment_name(after),
            "changed_at": format_rfc3339(e.t),
            "model_version": version,
            "trigger": e.trigger,
            "confidence": round(1.0 if e.quiet or after is None else min(1.0, max(0.0, margin)), 4),
            "sequence": state.seq,
            "timezone": zone if time_zone(zone := state.context.get("timezone")) else None,
            "reasons": reasons,
            "source": {
                "topic": self.settings.erasure_topic if e.trigger == "erased" else self.settings.input_topic,
                "partition": e.source[0],
                "offset": e.source[1],
            },
        }
        if e.trigger == "model_update":
            record["cause"] = e.cause.event_id if e.cause else None
        res.changes.append((e.user_id, codec.dumps(record), e.consumed_at))
        res.transitions.append((before or "none", after or "none", e.t, e.trigger))

    def _check_rules(self, res: BatchResult, uid: str, state: UserState, t: int) -> None:
        """Custom segments: a membership event for each one the user enters or leaves as of event time ``t``."""
        feats = rule_features(state, t, self.provisional, self.half_lives)
        self._set_rule_segments(res, uid, state, t, sorted(r.name for r in self.segment_rules if r.test(feats)), feats)

    def _set_rule_segments(
        self, res: BatchResult, uid: str, state: UserState, t: int, now: list[str], feats: dict[str, float]
    ) -> None:
        before = state.rule_segments
        if now == before:
            return
        moves = [(name, "entered") for name in now if name not in before]
        moves += [(name, "exited") for name in before if name not in now]
        for name, action in sorted(moves):
            state.rule_seq += 1
            rule = self._rules_by_name.get(name)  # a segment removed from the file: its members exit
            record = {
                "schema": "segment-membership.v1",
                "event_id": membership_id(uid, state.rule_seq, name, action, state.origin),
                "user_id": uid,
                "segment": name,
                "action": action,
                "at": format_rfc3339(t),
                "sequence": state.rule_seq,
                "condition": rule.condition if rule else None,
                "features": {n: round(feats[n], 4) for n in (rule.names if rule else ()) if n in feats},
            }
            res.memberships.append((uid, name, action, codec.dumps(record)))
        state.rule_segments = now

    def _remember(
        self, state: UserState, before: str | None, after: str, e: _Eval, reasons: list[dict[str, Any]]
    ) -> None:
        """Keep the change in the user's recent history (its two strongest reasons), newest last."""
        keep = self.settings.user_history
        if not keep:
            return
        why = [[r["feature"], r["direction"]] for r in reasons[:HISTORY_REASONS]]
        state.history.append([state.seq, before, after, e.t, e.trigger, why])
        del state.history[:-keep]

    def segment_name(self, persona_id: str | None) -> str | None:
        if persona_id in RESERVED:
            return persona_id
        return self.model.name_of(persona_id) if self.model else persona_id


def membership_id(user_id: str, seq: int, segment: str, action: str, origin: int) -> str:
    """Same profile, same position in its membership chain, same move → same id, after any crash or replay."""
    return _event_id(user_id, origin, seq, segment, action)


def change_id(user_id: str, seq: int, before: str | None, after: str | None, origin: int) -> str:
    """Same profile (user and ``origin``, the time of its first event), same position in its change chain, same
    move → same id, after any crash or replay; a profile started after an erasure gets ids of its own."""
    return _event_id(user_id, origin, seq, before or "", after or "")


def _event_id(user_id: str, origin: int, *parts: object) -> str:
    key = "\x1f".join((user_id, *(str(p) for p in parts), str(origin))).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(key, digest_size=16).hexdigest()
