"""Event-time parsing and formatting: RFC 3339 strings and epoch milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

from worker.errors import InvalidEvent

_MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


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
