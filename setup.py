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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

from setuptools import Extension, setup
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


def _fall_back(why: BaseException | str) -> None:
    if MODE == "compiled":
        raise SystemExit(f"SEGMENT_WORKER_BUILD_CORE=compiled: the core did not compile: {why}")
    (HERE / "worker" / CORE.DIGEST_FILE).unlink(missing_ok=True)
    print(f"segment-worker: installing the interpreted core (slower): {why}", file=sys.stderr)


class CoreBuildExt(build_ext):  # type: ignore[misc]  # setuptools is untyped here
    """Builds the core's extensions, their C files on every core; any failure leaves no compiled core at all.

    mypyc puts the whole core in one extension (one C file per module, ``multi_file``) and a small shim per module.
    ``build_ext --parallel`` spreads whole extensions over the cores, which leaves that one extension's ~30 files
    to a single compiler process (~48 s here); compiling its files side by side takes ~20 s on two cores.
    """

    def build_extensions(self) -> None:
        asked: Any = getattr(self, "parallel", None)  # build_ext --parallel N
        jobs = asked if isinstance(asked, int) and asked > 1 else os.cpu_count() or 1
        self.parallel = None  # one extension at a time, each one's files in parallel
        if jobs > 1:
            self.compiler.compile = _compile_in_parallel(self.compiler.compile, jobs)
        super().build_extensions()

    def run(self) -> None:
        digests = self._translate()
        try:
            super().run()
        except Exception as exc:  # compiler missing or failing: all or none of the group
            for built in self.get_outputs():
                Path(built).unlink(missing_ok=True)
            self._digests_path().unlink(missing_ok=True)
            _fall_back(exc)
            return
        if digests:  # beside the compiled files: in the source tree (editable, --inplace) or the wheel's tree
            self._digests_path().write_text(json.dumps(digests, indent=1))

    def _translate(self) -> dict[str, str]:
        """mypyc's C files and build options into the planned extensions (setuptools has set those up by name).

        Translating here, when a build runs, rather than when setup.py loads: pip's metadata steps load it twice
        more (and finalize this command, for the list of sources), and one translation costs ~15 s. Returns the
        digests of the sources translated ({} for the interpreted core).
        """
        made, digests = _translated_core()
        if not made:  # the interpreted core (auto mode): nothing to build
            self.extensions: list[Any] = []
            return {}
        if made.keys() != {extension.name for extension in self.extensions}:
            raise SystemExit(f"setup.py planned {PLANNED_NAMES}, mypyc made {sorted(made)}")
        for planned in self.extensions:  # keep what setuptools set on them (its "_"-names): their file names
            vars(planned).update({k: v for k, v in vars(made[planned.name]).items() if not k.startswith("_")})
        return digests

    def _digests_path(self) -> Path:
        root = HERE if self.inplace else Path(self.build_lib)
        return root / "worker" / str(CORE.DIGEST_FILE)


def _compile_in_parallel(compile_files: Callable[..., list[str]], jobs: int) -> Callable[..., list[str]]:
    """``CCompiler.compile`` with each source file compiled in a thread of its own (the compiler is a subprocess)."""

    def compile_each(sources: list[str], *args: Any, **kwargs: Any) -> list[str]:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            objects = pool.map(lambda source: compile_files([source], *args, **kwargs), sources)
            return [obj for part in objects for obj in part]

    return compile_each


def _translated_core() -> tuple[dict[str, Any], dict[str, str]]:
    """mypyc's extensions by name and the SHA-256 of each source it translated; nothing when it cannot."""
    sources = [CORE.source_path(HERE, module) for module in CORE.CORE_MODULES]
    digests = {module: CORE.source_digest(path) for module, path in zip(CORE.CORE_MODULES, sources, strict=True)}
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
            multi_file=True,  # a C file per module: CoreBuildExt compiles them side by side
        )
    except (Exception, SystemExit) as exc:  # mypyc missing or refusing the code
        _fall_back(exc)
        return {}, {}
    return {extension.name: extension for extension in extensions}, digests


if MODE == "python":
    _fall_back("SEGMENT_WORKER_BUILD_CORE=python")
# mypyc's extensions by name (its group library, a shim per module), their sources filled in by CoreBuildExt
PLANNED_NAMES = [] if MODE == "python" else ["segment_worker_core__mypyc", *CORE.CORE_MODULES]
setup(ext_modules=[Extension(name, sources=[]) for name in PLANNED_NAMES], cmdclass={"build_ext": CoreBuildExt})
