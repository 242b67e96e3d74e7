"""The ``segment-worker`` command: run, demo, generate, replay."""

from __future__ import annotations
