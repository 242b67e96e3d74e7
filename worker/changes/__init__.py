"""Segment changes: hysteresis, silence re-evaluation, deterministic change events with reasons."""

from __future__ import annotations

from worker.changes.segmenter import BatchResult, InputRecord, Segmenter

__all__ = ["BatchResult", "InputRecord", "Segmenter"]
