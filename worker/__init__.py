"""segment-worker: streaming dynamic customer segmentation on Kafka."""

from __future__ import annotations

__version__ = "0.1.0"
