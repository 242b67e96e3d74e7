"""Persistent persona ids across model updates, and human-readable names from centroid profiles."""

from __future__ import annotations

from worker.personas.naming import load_name_overrides, name_personas
from worker.personas.registry import DORMANT, LAPSING, NEW, ids_by_members, match_ids

__all__ = ["DORMANT", "LAPSING", "NEW", "ids_by_members", "load_name_overrides", "match_ids", "name_personas"]
