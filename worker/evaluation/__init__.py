"""Measured segmentation quality: scenario worlds, engines that run them, scores against ground truth."""

from __future__ import annotations
