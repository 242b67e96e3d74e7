from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import REGISTRY

import worker.metrics  # noqa: F401  (registers the worker's metrics)
from worker.metrics import triggers

README = (Path(__file__).parents[2] / "README.md").read_text()


def _exported() -> set[str]:
    """Names as scraped, of the worker and of the trigger service: counters with ``_total``, the rest as declared."""
    names = set()
    for registry in (REGISTRY, triggers.REGISTRY):
        for family in registry.collect():
            if family.name.startswith("segment_worker_"):
                names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


def test_every_metric_is_documented_in_the_readme_and_every_documented_one_exists() -> None:
    section = README.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(segment_worker_[a-z_]+)`", section))
    assert _exported() - documented == set(), "metrics missing from README's table"
    assert documented - _exported() == set(), "README documents metrics the worker does not export"
