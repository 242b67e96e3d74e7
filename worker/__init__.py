"""segment-worker: streaming dynamic customer segmentation on Kafka."""

from __future__ import annotations

from worker import corebuild

__version__ = "0.1.0"

corebuild.activate()  # before any module of the core is imported: a compiled core only when it is current
