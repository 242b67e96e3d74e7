"""Build step beside pyproject.toml: the per-event core compiled with mypyc where it can be.

The modules listed in ``worker/corebuild.py`` are compiled to C extensions (1.6-1.7x the events per second of the
same code interpreted, bench/core.py). The pure-Python modules stay installed beside them and run wherever the
compiled ones do not apply (``worker/corebuild.py`` decides at import). ``SEGMENT_WORKER_BUILD_CORE`` chooses:

- ``auto`` (default): compile; when that fails (no C compiler, no Python headers) install the interpreted core and
  say so in the build log;
- ``compiled``: compile or fail the install (CI uses it, so a broken build cannot pass as an interpreted one);
- ``python``: never compile.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
MODES = ("auto", "compiled", "python")
MODE = os.environ.get("SEGMENT_WORKER_BUILD_CORE", "auto")
if MODE not in MODES:
    raise SystemExit(f"SEGMENT_WORKER_BUILD_CORE={MODE!r}: expected one of {', '.join(MODES)}")


def _corebuild() -> ModuleType:
    """worker/corebuild.py by its path: nothing of the package's dependencies is installed yet."""
    spec = importlib.util.spec_from_file_location("_segment_worker_corebuild", HERE / "worker" / "corebuild.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


CORE = _corebuild()
DIGESTS = HERE / "worker" / CORE.DIGEST_FILE


def _fall_back(why: BaseException | str) -> None:
    if MODE == "compiled":
        raise SystemExit(f"SEGMENT_WORKER_BUILD_CORE=compiled: the core did not compile: {why}")
    DIGESTS.unlink(missing_ok=True)
    print(f"segment-worker: installing the interpreted core (slower): {why}", file=sys.stderr)


class CoreBuildExt(build_ext):  # type: ignore[misc]  # setuptools is untyped here
    """Builds the core's extensions on both cores; any failure leaves no compiled core at all."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if getattr(self, "parallel", None) is None:
            self.parallel = os.cpu_count() or 1

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # compiler missing or failing: all or none of the group
            for built in self.get_outputs():
                Path(built).unlink(missing_ok=True)
            _fall_back(exc)


def _extensions() -> list[Any]:
    if MODE == "python":
        _fall_back("SEGMENT_WORKER_BUILD_CORE=python")
        return []
    sources = [CORE.source_path(HERE, module) for module in CORE.CORE_MODULES]
    try:
        from mypyc.build import mypycify

        # the build environment has none of the runtime dependencies: their types are Any to mypyc, and the
        # project's strict checks (which would refuse such Anys) are CI's `mypy`, not the compiler's
        config = HERE / "build" / "mypyc.ini"
        config.parent.mkdir(exist_ok=True)
        config.write_text("[mypy]\nignore_missing_imports = True\n")
        extensions = mypycify(
            ["--config-file", str(config), *(str(p.relative_to(HERE)) for p in sources)],
            opt_level="3",
            group_name="segment_worker_core",
        )
    except (Exception, SystemExit) as exc:  # mypyc missing or refusing the code
        _fall_back(exc)
        return []
    digests = {module: CORE.source_digest(path) for module, path in zip(CORE.CORE_MODULES, sources, strict=True)}
    DIGESTS.write_text(json.dumps(digests, indent=1))
    return list(extensions)


setup(ext_modules=_extensions(), cmdclass={"build_ext": CoreBuildExt})
