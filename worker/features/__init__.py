"""Per-user behavioural features in event time: decayed rates, recency, spend, sessions, rhythm, context."""

from __future__ import annotations

from worker.features.space import FeatureSpace
from worker.features.state import UserState, apply_event
from worker.features.watermark import Watermarks

__all__ = ["FeatureSpace", "UserState", "Watermarks", "apply_event"]
