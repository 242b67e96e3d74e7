"""Synthetic populations with known personas: the ground truth for the demo, tests and evaluation."""

from __future__ import annotations

from worker.synth.population import PERSONAS, Population, Truth, generate

__all__ = ["PERSONAS", "Population", "Truth", "generate"]
