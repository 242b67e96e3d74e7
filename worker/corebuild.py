"""The per-event core, compiled or not: which build this process runs, and never a stale one.

``setup.py`` compiles the modules of :data:`CORE_MODULES` with mypyc where a C compiler is at hand (1.6-1.7x the
events per second of the same code interpreted; see README "Performance") and records the SHA-256 of each source
it compiled in :data:`DIGEST_FILE`. An editable install keeps the compiled files beside the sources, so after an
edit the extension would run the code before it: :func:`activate` (called by ``worker/__init__``, before any core
module is imported) checks every source against its digest and, when one differs or a compiled file is missing,
makes the whole core load from source (the compiled modules call each other directly, so it is all or none).

Only the standard library here: ``setup.py`` reads :data:`CORE_MODULES` from this file before anything is
installed.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

# the per-event path of the core (bench/core.py) and what it calls per event; plain typed Python, mypyc-clean
CORE_MODULES: tuple[str, ...] = (
    "worker.codec",
    "worker.changes.dormancy",
    "worker.changes.hysteresis",
    "worker.changes.kept",
    "worker.changes.owners",
    "worker.changes.segmenter",
    "worker.changes.silence",
    "worker.events.ingest",
    "worker.events.timefmt",
    "worker.features.space",
    "worker.features.state",
    "worker.features.watermark",
    "worker.features.wire",
    "worker.runtime.records",
)
DIGEST_FILE = "_corebuild.json"  # in the package directory: {module: SHA-256 of the source compiled}
ROOT = Path(__file__).resolve().parent.parent  # the directory holding the package


def source_path(root: Path, module: str) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _compiled_file(source: Path) -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = source.with_suffix(suffix)
        if candidate.exists():
            return candidate
    return None


@dataclass(frozen=True)
class CoreBuild:
    """What the core of this process is: ``compiled``, or ``python`` and why."""

    compiled: bool
    reason: str  # why the core runs interpreted ("" when compiled)

    @property
    def label(self) -> str:
        return "compiled" if self.compiled else "python"


def inspect(root: Path, modules: Sequence[str] = CORE_MODULES) -> CoreBuild:
    """The build the sources under ``root`` would run: compiled only if every module is, from its current source."""
    digests_path = root / "worker" / DIGEST_FILE
    if not digests_path.exists() or not any(_compiled_file(source_path(root, m)) for m in modules):
        return CoreBuild(False, "installed without compiling the core")  # a failed compile can leave its digests
    digests: dict[str, str] = json.loads(digests_path.read_bytes())
    for module in modules:
        source = source_path(root, module)
        if _compiled_file(source) is None:
            return CoreBuild(False, f"{module} has no compiled file")
        if digests.get(module) != source_digest(source):
            return CoreBuild(False, f"{module} changed since it was compiled (pip install -e . compiles it again)")
    return CoreBuild(True, "")


class SourceFirst:
    """A finder that loads the named modules from their ``.py`` files even where a compiled file sits beside them."""

    def __init__(self, root: Path, modules: Sequence[str]) -> None:
        self._root = root
        self._modules = frozenset(modules)

    def find_spec(self, name: str, path: object = None, target: ModuleType | None = None) -> ModuleSpec | None:
        if name not in self._modules:
            return None
        return importlib.util.spec_from_file_location(name, source_path(self._root, name))


_active: CoreBuild | None = None


def activate(force_source: bool = False) -> CoreBuild:
    """Decide once per process, before any core module is imported; ``force_source``: interpreted whatever is built."""
    global _active
    if _active is not None and not force_source:
        return _active
    build = inspect(ROOT)
    if force_source and build.compiled:
        build = CoreBuild(False, "interpreted on request")
    loaded = [m for m in CORE_MODULES if m in sys.modules]
    if force_source and loaded:
        raise RuntimeError(f"the core is already imported ({', '.join(loaded)}): too late to choose its build")
    shadowed = any(_compiled_file(source_path(ROOT, m)) for m in CORE_MODULES)
    if not build.compiled and shadowed and not any(isinstance(f, SourceFirst) for f in sys.meta_path):
        sys.meta_path.insert(0, SourceFirst(ROOT, CORE_MODULES))
    _active = build
    return build


def current() -> CoreBuild:
    return activate()
