"""Decode and validate one input record: orjson + a schema validator compiled once (fastjsonschema).

Two kinds of record come in: user events (``user-event.v1``) and erasure requests (``erasure-request.v1``).
Anything that cannot be applied raises :class:`~worker.errors.InvalidEvent` with a stable reason code; the caller
dead-letters the original bytes with that reason. Reason codes (the ``reason`` label of the dead-letter metric):

``empty``, ``oversize``, ``not_json``, ``non_finite_number``, ``not_object``, ``missing_field``,
``invalid_field``, ``bad_timestamp``, ``timestamp_in_future``, ``internal_error`` (set by the caller).

User ids are replaced by their pseudonym here when the worker is configured with a key
(:mod:`worker.events.pseudonym`): nothing after ingest sees a raw id.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastjsonschema

from worker import codec
from worker.errors import InvalidEvent
from worker.events.pseudonym import pseudonymizer
from worker.events.timefmt import parse_timestamp

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
CONTEXT_KEYS = ("platform", "country", "language", "channel", "timezone")
_CONTEXT_KEY_SET = frozenset(CONTEXT_KEYS)
_MAX_TS_MS = 253402300799999  # 9999-12-31T23:59:59.999Z, the schema's bound
_ABSENT = object()


def load_schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = codec.loads((SCHEMA_DIR / name).read_bytes())
    return schema


# the constructors are written out: a dataclass-generated one runs interpreted even in the compiled core (where
# the interpreter may also hand the lock to another thread), and an event is made per consumed record


@dataclass(slots=True, init=False)
class UserEvent:
    user_id: str
    event_type: str
    ts: int  # event time, epoch ms
    value: float | None
    session_id: str | None
    context: dict[str, str] | None
    consent: bool | None  # context.consent.segmentation: False opts the user out, True back in

    def __init__(
        self,
        user_id: str,
        event_type: str,
        ts: int,
        value: float | None,
        session_id: str | None,
        context: dict[str, str] | None,
        consent: bool | None = None,
    ) -> None:
        self.user_id, self.event_type, self.ts, self.value = user_id, event_type, ts, value
        self.session_id, self.context, self.consent = session_id, context, consent


@dataclass(slots=True, init=False)
class ErasureRequest:
    user_id: str
    requested_at: int  # epoch ms
    request_id: str | None

    def __init__(self, user_id: str, requested_at: int, request_id: str | None) -> None:
        self.user_id, self.requested_at, self.request_id = user_id, requested_at, request_id


def _surely_valid(doc: dict[str, Any]) -> bool:
    """True only for a document the schema accepts: the common shapes, checked in a few microseconds.

    The compiled validator costs about 40 µs an event, most of it raising and catching an exception for the
    ``oneOf`` branch the timestamp does not take. Whatever this does not recognise goes to the validator, so it
    may be stricter than the schema, never looser (a test checks both on generated and mutated events). Checks are
    written out, not calls to a helper: a call costs as much as the check.
    """
    ts: Any = doc.get("timestamp")
    tst = type(ts)
    uid: Any = doc.get("user_id")
    etype: Any = doc.get("event_type")
    if not (
        ((tst is int and 0 <= ts <= _MAX_TS_MS) or (tst is str and 10 <= len(ts) <= 64))
        and type(uid) is str
        and 1 <= len(uid) <= 256
        and type(etype) is str
        and 1 <= len(etype) <= 128
    ):
        return False
    x = doc.get("session_id", _ABSENT)
    if x is not _ABSENT and not (type(x) is str and 1 <= len(x) <= 256):
        return False
    x = doc.get("event_id", _ABSENT)
    if x is not _ABSENT and not (type(x) is str and 1 <= len(x) <= 256):
        return False
    value = doc.get("value", _ABSENT)
    if value is not _ABSENT and type(value) is not float and type(value) is not int:
        return False
    ctx = doc.get("context", _ABSENT)
    if ctx is not _ABSENT and not _context_ok(ctx):
        return False
    props = doc.get("properties", _ABSENT)
    return props is _ABSENT or type(props) is dict


def _context_ok(ctx: Any) -> bool:
    if type(ctx) is not dict:
        return False
    for key, x in ctx.items():  # (a context has a few keys; other keys than these the schema lets through)
        if key in _CONTEXT_KEY_SET:
            if type(x) is not str or len(x) > 64:
                return False
        elif key == "consent" and not (type(x) is dict and _consent_ok(x)):
            return False
    return True


def _consent_ok(consent: dict[str, Any]) -> bool:
    x = consent.get("segmentation", _ABSENT)
    return x is _ABSENT or type(x) is bool


class EventParser:
    """Compiled once per process; ``parse`` is the per-record hot path."""

    def __init__(self, max_bytes: int, max_future_ms: int, pseudonym_key: str = "") -> None:
        self.max_bytes = max_bytes
        self.max_future_ms = max_future_ms
        self.pseudonym: Callable[[str], str] = pseudonymizer(pseudonym_key)
        self.pseudonymous = bool(pseudonym_key)
        self._validate = fastjsonschema.compile(load_schema("user-event.v1.json"))
        self._validate_erasure = fastjsonschema.compile(load_schema("erasure-request.v1.json"))

    def parse(self, raw: bytes | None, now_ms: int) -> UserEvent:
        """``now_ms`` (wall clock) only bounds how far in the future an event may claim to be."""
        doc = self._document(raw)
        try:
            if not _surely_valid(doc):  # the compiled validator decides, and says why
                self._validate(doc)
        except fastjsonschema.JsonSchemaValueException as exc:
            raise _schema_error(exc, "data.timestamp") from None
        ts = self._time(doc["timestamp"], now_ms)
        value = doc.get("value")
        if value is not None:
            value = float(value)
            if not math.isfinite(value):  # e.g. a huge integer beyond the float range
                raise InvalidEvent("non_finite_number", "value is not a finite number")
        ctx = doc.get("context")
        context = consent = None
        if ctx:
            if ctx.keys() <= _CONTEXT_KEY_SET:  # the common case: nothing but the kept keys
                context = ctx
            else:
                context = {k: ctx[k] for k in CONTEXT_KEYS if k in ctx} or None
                if "consent" in ctx:
                    consent = ctx["consent"].get("segmentation")
        uid = doc["user_id"]
        if self.pseudonymous:
            uid = self.pseudonym(uid)
        return UserEvent(uid, doc["event_type"], ts, value, doc.get("session_id"), context, consent)

    def parse_erasure(self, raw: bytes | None, now_ms: int) -> ErasureRequest:
        """An erasure request (``erasure-request.v1``), with the same checks and reason codes as an event."""
        doc = self._document(raw)
        try:
            self._validate_erasure(doc)
        except fastjsonschema.JsonSchemaValueException as exc:
            raise _schema_error(exc, "data.requested_at") from None
        return ErasureRequest(
            self.pseudonym(doc["user_id"]), self._time(doc["requested_at"], now_ms), doc.get("request_id")
        )

    def _time(self, raw: Any, now_ms: int) -> int:
        # epoch milliseconds, the common form, without a call (per record)
        ts = raw if type(raw) is int and 0 <= raw <= _MAX_TS_MS else parse_timestamp(raw)
        if ts > now_ms + self.max_future_ms:
            raise InvalidEvent("timestamp_in_future", "the time is beyond the allowed clock skew")
        return ts

    def _document(self, raw: bytes | None) -> dict[str, Any]:
        if not raw:
            raise InvalidEvent("empty", "record has no value")
        if len(raw) > self.max_bytes:
            raise InvalidEvent("oversize", f"{len(raw)} bytes > limit {self.max_bytes}")
        try:
            doc = codec.loads(raw)
        except codec.JSONDecodeError as exc:
            text = str(exc)
            if "infinity" in text or b"NaN" in raw or b"Infinity" in raw:
                raise InvalidEvent("non_finite_number", "NaN or infinite number") from None
            raise InvalidEvent("not_json", text[:200]) from None
        if not isinstance(doc, dict):
            raise InvalidEvent("not_object", f"JSON {type(doc).__name__}, expected an object")
        return doc


def _schema_error(exc: fastjsonschema.JsonSchemaValueException, time_field: str) -> InvalidEvent:
    if exc.rule == "required":
        reason = "missing_field"
    elif exc.name == time_field:
        reason = "bad_timestamp"
    else:
        reason = "invalid_field"
    return InvalidEvent(reason, exc.message[:200])
