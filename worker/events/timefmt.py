"""Event-time parsing and formatting: RFC 3339 strings and epoch milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

from worker.errors import InvalidEvent

_MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
# a zone's UTC offset is looked up once per quarter hour of event time (no zone changes it twice within one)
_OFFSET_SPAN_MS = 900_000
_OFFSETS_KEPT = 100_000
_VARIES = -(2**62)  # a quarter hour with a change of offset inside: looked up at each event
_offsets: dict[tuple[str, int], int] = {}
_MINUTES_KEPT = 100_000
_minutes: dict[str, int] = {}  # "YYYY-MM-DDTHH:MM" -> epoch seconds of that UTC minute (-1: not a valid one)


def parse_timestamp(value: object) -> int:
    """Event time in epoch milliseconds from an RFC 3339 string (with offset) or epoch milliseconds (a whole float
    too: JSON Schema counts 1.0 as an integer; a boolean is none)."""
    if isinstance(value, str):
        return _parse_text(value)
    if isinstance(value, int) and not isinstance(value, bool):
        ms = value
    elif isinstance(value, float) and value.is_integer():
        ms = int(value)
    else:
        raise InvalidEvent("bad_timestamp", f"not epoch milliseconds nor RFC 3339: {type(value).__name__}")
    if not 0 <= ms <= _MAX_MS:
        raise InvalidEvent("bad_timestamp", f"epoch milliseconds out of range: {ms}")
    return ms


def _parse_text(value: str) -> int:
    if len(value) == 24 and value[23] == "Z" and value[19] == "." and value.isascii():
        ms = _parse_millis_z(value)  # the form this project writes (format_rfc3339): without a datetime per event
        if ms >= 0:
            return ms
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidEvent("bad_timestamp", f"not an RFC 3339 date-time: {value[:64]!r}") from None
    if parsed.tzinfo is None:
        raise InvalidEvent("bad_timestamp", f"RFC 3339 needs a UTC offset or 'Z': {value[:64]!r}")
    if "T" not in value and "t" not in value and " " not in value:
        raise InvalidEvent("bad_timestamp", f"a date without a time: {value[:64]!r}")
    ms = int(parsed.timestamp() * 1000)
    if ms < 0:
        raise InvalidEvent("bad_timestamp", f"before 1970: {value[:64]!r}")
    return ms


def _parse_millis_z(value: str) -> int:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ`` (ASCII) as ``datetime`` reads it, the date and minute looked up once per
    minute; -1 when it is not exactly that form (the caller's full parse decides and says why)."""
    base = _minutes.get(value[:16])
    if base is None:
        try:
            base = int(datetime.fromisoformat(value[:16] + ":00+00:00").timestamp()) if value[10] == "T" else -1
        except ValueError:
            base = -1
        if len(_minutes) >= _MINUTES_KEPT:
            _minutes.clear()
        _minutes[value[:16]] = base
    sec, millis = value[17:19], value[20:23]
    if base < 0 or value[16] != ":" or not (sec.isdigit() and millis.isdigit()) or sec > "59":
        return -1
    # exactly datetime.timestamp(): whole microseconds over 10**6 (one rounding), then milliseconds truncated
    return int(((base + int(sec)) * 10**6 + int(millis) * 1000) / 10**6 * 1000)


def format_rfc3339(ms: int) -> str:
    """UTC RFC 3339 with millisecond precision, e.g. ``2026-01-02T03:04:05.006Z``."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@lru_cache(maxsize=1024)
def time_zone(name: str | None) -> ZoneInfo | None:
    """The IANA time zone of that name; None for none, an unknown or a malformed name (callers use UTC)."""
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError, OSError):
        return None


def utc_offset_ms(name: str | None, ms: int) -> int:
    """The UTC offset of time zone ``name`` at epoch milliseconds ``ms`` (0 for no zone, an unknown or a malformed
    one), as ``datetime.fromtimestamp`` would apply it. Per event on the hot path: a quarter hour of event time
    whose offset holds from its first to its last millisecond is looked up once."""
    if not name:
        return 0
    key = (name, ms // _OFFSET_SPAN_MS)
    offset = _offsets.get(key)
    if offset is None:
        if len(_offsets) >= _OFFSETS_KEPT:
            _offsets.clear()
        start = key[1] * _OFFSET_SPAN_MS
        first, last = _offset_at(name, start), _offset_at(name, start + _OFFSET_SPAN_MS - 1)
        offset = _offsets[key] = first if first == last else _VARIES
    return _offset_at(name, ms) if offset == _VARIES else offset


def _offset_at(name: str, ms: int) -> int:
    zone = time_zone(name)
    if zone is None:
        return 0
    delta = datetime.fromtimestamp(ms / 1000, tz=zone).utcoffset()
    return 0 if delta is None else (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
