"""Every module of the package imports on its own, first: no import cycle waits for the one import order that
happens to work (the lifecycle module once failed unless the clustering package had been loaded before it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parents[2] / "worker"

# one interpreter for all (seconds, not a minute): the package is unloaded before each module, and the metrics it
# registered are dropped (prometheus_client keeps no public list of them)
SCRIPT = """
import importlib, sys
from prometheus_client import REGISTRY
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "worker" or m.startswith("worker.")]:
        del sys.modules[loaded]
    for collector in list(REGISTRY._collector_to_names):
        REGISTRY.unregister(collector)
    try:
        importlib.import_module(name)
    except ImportError as exc:
        failed.append(f"{name}: {exc}")
print("\\n".join(failed))
"""


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__main__.py":  # runs the command line
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_module_imports_first() -> None:
    modules = _modules()
    assert "worker.personas.lifecycle" in modules and len(modules) > 50
    out = subprocess.run([sys.executable, "-c", SCRIPT, *modules], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
