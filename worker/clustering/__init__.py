"""The persona model: batch warm start + River online k-means, versioned snapshots, vectorised assignment.

The trainer is imported from :mod:`worker.clustering.trainer`: it derives lifecycle events
(:mod:`worker.personas.lifecycle`), which read snapshots, so loading it here would make importing either a cycle.
"""

from __future__ import annotations

from worker.clustering.snapshot import Assignment, ModelSnapshot

__all__ = ["Assignment", "ModelSnapshot"]
