"""The persona model: batch warm start + River online k-means, versioned snapshots, vectorised assignment."""

from __future__ import annotations

from worker.clustering.snapshot import Assignment, ModelSnapshot
from worker.clustering.trainer import Trainer

__all__ = ["Assignment", "ModelSnapshot", "Trainer"]
