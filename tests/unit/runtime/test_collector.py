"""The garbage collector's settings for the worker process, in a process of their own (freezing is for good)."""

from __future__ import annotations

import subprocess
import sys

from worker.runtime.collector import YOUNG_THRESHOLD

PROBE = """
import gc
import worker.app  # what the worker imports before it starts: lives as long as the process
from worker.runtime.collector import settle_after_start
before = gc.get_freeze_count()
settle_after_start()
cycle = []
cycle.append(cycle)  # made after the start: still collected
del cycle
print(before, gc.get_freeze_count(), gc.get_threshold()[0], gc.collect())
"""


def test_what_the_start_made_leaves_the_collections_and_young_ones_come_less_often() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout.split()
    frozen_before, frozen, young, collected = map(int, out)
    assert frozen_before == 0 and frozen > 50_000  # the imports' objects, out of every later collection
    assert young == YOUNG_THRESHOLD
    assert collected >= 1  # a cycle made after the start is still found
