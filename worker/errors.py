"""The one exception root of segment-worker, with small subclasses per domain."""

from __future__ import annotations


class SegmentWorkerError(Exception):
    """Root of every error segment-worker raises on purpose."""


class ConfigError(SegmentWorkerError):
    """A setting is missing, malformed or inconsistent."""


class InvalidEvent(SegmentWorkerError):
    """An input record cannot be applied; it goes to the dead-letter topic.

    ``reason`` is a short stable code (a Prometheus label value), ``detail`` a human sentence.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ModelError(SegmentWorkerError):
    """A model snapshot cannot be built, loaded or applied."""


class BrokerError(SegmentWorkerError):
    """The embedded broker could not be started or reached."""


class TopicError(SegmentWorkerError):
    """A topic the worker reads or writes is missing and cannot be created, or is partitioned unlike the plan."""
