"""Ingest: decoding and validating user events, dead-letter records."""

from __future__ import annotations

from worker.events.ingest import EventParser, UserEvent
from worker.events.timefmt import format_rfc3339, parse_timestamp

__all__ = ["EventParser", "UserEvent", "format_rfc3339", "parse_timestamp"]
