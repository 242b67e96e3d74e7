"""The compact, lossless binary form of a :class:`UserState` kept in the ``users`` changelog.

The changelog holds one record per user, so its size is the state's size at scale: the JSON array this replaces
averaged about 440 bytes a user, most of them the decimal digits of decayed floats and 13-digit timestamps.
Here every float keeps its exact 64 bits (a restored state must re-emit byte-identical changes) and zeros cost one
bit.

Layout (format 1): the format byte; the length of what follows (one byte, or 0xFF and four); a compact JSON array
of everything but the floats (the last event time relative to the first, the other times relative to the last,
``null`` for an unset one); then the floats value_total, sessions, weekend, daypart[4], spend[H] and each event
type's counts[H], as a bitmask of the non-zero ones followed by those as little-endian IEEE doubles. The JSON
part decodes in C, and the floats are spread back by a cached ``itemgetter`` per zero pattern. After the floats,
when the user has any, a JSON object of what was added later: ``h`` the recent segment changes (times relative to
the last event), ``r`` and ``q`` the custom segments and their event count, ``g`` the profile's origin time
relative to the first event (only when an out-of-order event came before it), ``x`` the longest gap between
events. Outside the skeleton, so :func:`peek`
does not parse it, and a record written before it existed still decodes.

A user who withdrew consent is stored as the single byte ``MARKER`` (:meth:`UserState.marker`).

A record that starts with ``[`` is the older all-JSON form, which still decodes, so an existing changelog is read
after an upgrade.

The worker keeps its users' states in memory in this form too (:class:`EncodedStates`): about a tenth of the
memory of the decoded objects, and a recovery only copies bytes. A state is decoded when a batch touches its user;
index rebuilds read only the three fields they need (:func:`peek`).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterator, MutableMapping
from functools import lru_cache
from operator import itemgetter
from typing import Any

from worker import codec
from worker.errors import SegmentWorkerError
from worker.features.state import UserState

FORMAT = 1
MARKER = b"\x02"  # consent withdrawn: no features, only the fact
_LEGACY_JSON = ord("[")
_FIXED_FLOATS = 7  # value_total, sessions, weekend, daypart[4]
_LONG = 0xFF  # a skeleton this long or longer has its length in the next 4 bytes


class StateDecodeError(SegmentWorkerError):
    """A changelog value that is not a user state this version can read."""


@lru_cache(maxsize=256)
def _doubles(count: int) -> struct.Struct:
    return struct.Struct(f"<{count}d")


@lru_cache(maxsize=4096)
def _spread(mask: int, count: int) -> Callable[[tuple[float, ...]], tuple[float, ...]]:
    """Picks ``count`` floats out of (the non-zero ones..., 0.0) by ``mask``, in C: users share few zero patterns."""
    picks, j = [], 0
    for i in range(count):
        if mask >> i & 1:
            picks.append(j)
            j += 1
        else:
            picks.append(-1)
    picks += [-1, -1]  # itemgetter of one index returns a bare item, not a tuple
    getter = itemgetter(*picks)
    return lambda values: getter(values)[:count]


def encode(state: UserState) -> bytes:
    if state.opted_out:
        return MARKER
    first, last = state.first_ts, state.last_ts
    offsets = state.offsets
    source = state.source
    src_partition = source[0]
    spend = state.spend
    h = len(spend)
    rates = state.rates
    skeleton = codec.dumps(
        [
            state.n,
            first,
            last - first,
            state.ref_ts - last,
            state.segment_since - last if state.segment_since else None,
            state.due - last if state.due else None,
            state.seq,
            state.model_version,
            state.pending_n,
            state.silence_step,
            state.segment,
            state.pending,
            state.last_session,
            state.context,
            offsets,
            src_partition,
            source[1] - offsets.get(str(src_partition), 0),
            h,
            list(rates),
        ]
    )
    floats = [state.value_total, state.sessions, state.weekend]
    floats.extend(state.daypart)
    floats.extend(spend)
    for name, counts in rates.items():
        if len(counts) != h:
            raise StateDecodeError(f"counts of {name!r} have {len(counts)} half-lives, spend has {h}")
        floats.extend(counts)
    mask, nonzero = _nonzero(floats)
    n = len(skeleton)
    prefix = bytes((FORMAT, n)) if n < _LONG else bytes((FORMAT, _LONG)) + n.to_bytes(4, "little")
    return b"".join(
        (
            prefix,
            skeleton,
            mask.to_bytes((len(floats) + 7) >> 3, "little"),
            _doubles(len(nonzero)).pack(*nonzero),
            _later_fields(state, first, last),
        )
    )


def _nonzero(floats: list[float]) -> tuple[int, list[float]]:
    """The bitmask of the non-zero floats (-0.0 counts: kept exactly) and those floats, in order."""
    mask = 0
    bit = 1
    nonzero = []
    for x in floats:
        if x != 0.0 or math.copysign(1.0, x) < 0.0:
            mask |= bit
            nonzero.append(x)
        bit <<= 1
    return mask, nonzero


def _later_fields(state: UserState, first: int, last: int) -> bytes:
    """The JSON object of the fields added after the skeleton (empty when the user has none of them)."""
    extra: dict[str, Any] = {}
    if state.history:
        relative = []
        for entry in state.history:  # [seq, from, to, time, ...]: the time relative to the last event
            entry = entry[:]
            entry[3] -= last
            relative.append(entry)
        extra["h"] = relative
    if state.rule_seq:
        extra["r"], extra["q"] = state.rule_segments, state.rule_seq
    if state.origin != first:
        extra["g"] = state.origin - first
    if state.max_gap:
        extra["x"] = state.max_gap
    if state.half_lives is not None:
        extra["s"] = [int(h) if h == int(h) else h for h in state.half_lives]
    return codec.dumps(extra) if extra else b""


def decode(buf: bytes) -> UserState:
    if not buf:
        raise StateDecodeError("empty user state")
    if buf[0] == _LEGACY_JSON:
        return UserState.from_fields(codec.loads(buf))
    if buf == MARKER:
        return UserState.marker()
    if buf[0] != FORMAT:
        raise StateDecodeError(f"user state in format {buf[0]}; this version reads format {FORMAT}")
    try:
        return _decode(buf)
    except (IndexError, ValueError, TypeError, struct.error) as exc:  # codec.JSONDecodeError is a ValueError
        raise StateDecodeError(f"truncated or corrupt user state: {exc}") from exc


def _skeleton_span(buf: bytes) -> tuple[int, int]:
    n, pos = buf[1], 2
    if n == _LONG:
        n, pos = int.from_bytes(buf[2:6], "little"), 6
    return pos, pos + n


def peek(buf: bytes) -> tuple[int, str | None, int]:
    """(event count, segment, due) of an encoded state, without decoding the rest (a fifth of :func:`decode`'s
    cost): what rebuilding the persona counts and silence timers needs of every user."""
    if buf[:1] != bytes((FORMAT,)):  # the older JSON form, or a marker
        state = decode(buf)
        return state.n, state.segment, state.due
    start, end = _skeleton_span(buf)
    try:
        skeleton = codec.loads(buf[start:end])
        first, d_last, d_due, segment = skeleton[1], skeleton[2], skeleton[5], skeleton[10]
        return skeleton[0], segment, 0 if d_due is None else first + d_last + d_due
    except (IndexError, ValueError, TypeError) as exc:
        raise StateDecodeError(f"truncated or corrupt user state: {exc}") from exc


class EncodedStates(MutableMapping[str, UserState]):
    """User id → :class:`UserState` over a mapping that holds each state encoded; decoded on every access, so a
    caller owns the object it gets (writing it back is :meth:`__setitem__`, or the caller's own store of bytes)."""

    def __init__(self, data: MutableMapping[str, bytes]) -> None:
        self.data = data

    def __reduce__(self) -> tuple[type[EncodedStates], tuple[MutableMapping[str, bytes]]]:
        return EncodedStates, (self.data,)  # copied and pickled by its bytes (a compiled class has no other way)

    def __getitem__(self, user_id: str) -> UserState:
        return decode(self.data[user_id])

    def get(self, user_id: str, default: UserState | None = None) -> UserState | None:  # type: ignore[override]
        raw = self.data.get(user_id)
        return default if raw is None else decode(raw)

    def __setitem__(self, user_id: str, state: UserState) -> None:
        self.data[user_id] = encode(state)

    def __delitem__(self, user_id: str) -> None:
        del self.data[user_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def summaries(self) -> Iterator[tuple[str, int, str | None, int]]:
        """(user id, event count, segment, due) of every state, decoding only those fields."""
        for user_id, raw in self.data.items():
            yield (user_id, *peek(raw))


def _decode(buf: bytes) -> UserState:
    pos, end = _skeleton_span(buf)
    (
        s_n,
        first,
        d_last,
        d_ref,
        d_since,
        d_due,
        seq,
        model_version,
        pending_n,
        silence_step,
        segment,
        pending,
        last_session,
        context,
        offsets,
        src_partition,
        d_src,
        h,
        names,
    ) = codec.loads(buf[pos:end])
    pos = end
    count = _FIXED_FLOATS + h * (1 + len(names))
    mask_len = (count + 7) >> 3
    mask = int.from_bytes(buf[pos : pos + mask_len], "little")
    pos += mask_len
    packed = _doubles(mask.bit_count()).unpack_from(buf, pos)
    pos += 8 * len(packed)
    floats = _spread(mask, count)((*packed, 0.0))
    s = UserState()
    s.n = s_n
    s.first_ts = first
    last = s.last_ts = first + d_last
    s.ref_ts = last + d_ref
    s.segment_since = 0 if d_since is None else last + d_since
    s.due = 0 if d_due is None else last + d_due
    s.seq = seq
    s.model_version = model_version
    s.pending_n = pending_n
    s.silence_step = silence_step
    s.segment = segment
    s.pending = pending
    s.last_session = last_session
    s.context = context
    s.offsets = offsets
    s.source = [src_partition, d_src + offsets.get(str(src_partition), 0)]
    s.value_total, s.sessions, s.weekend = floats[0], floats[1], floats[2]
    s.daypart = list(floats[3:7])
    s.spend = list(floats[7 : 7 + h])
    rest = iter(floats[7 + h :])  # h floats per event type, in order: grouped by zip over one iterator, in C
    s.rates = dict(zip(names, map(list, zip(*[rest] * h, strict=True)), strict=True))
    tail = codec.loads(buf[pos:]) if pos < len(buf) else {}
    if isinstance(tail, list):  # the first form of this part: the history alone
        tail = {"h": tail}
    if not isinstance(tail, dict):
        raise StateDecodeError(f"user state of {len(buf)} bytes: {len(buf) - pos} bytes after its floats")
    s.history = [[seq, before, after, dt + last, *more] for seq, before, after, dt, *more in tail.get("h", ())]
    s.rule_segments = tail.get("r", [])
    s.rule_seq = tail.get("q", 0)
    s.origin = first + tail.get("g", 0)
    s.max_gap = tail.get("x", 0)
    scale = tail.get("s")
    s.half_lives = None if scale is None else tuple(float(h) for h in scale)
    s.opted_out = False
    return s
