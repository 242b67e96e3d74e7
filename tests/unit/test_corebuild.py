"""The compiled core: the same changes as the interpreted one, and never a stale build (worker/corebuild.py)."""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from worker import corebuild

ROOT = Path(__file__).parents[2]
MODULES = ("pkg.fast", "pkg.slow")
# a file an import of the compiled module would load, and fail on: not a shared object
SO_SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def _tree(tmp_path: Path, compiled: bool = True) -> Path:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    digests = {}
    for module in MODULES:
        source = corebuild.source_path(tmp_path, module)
        source.write_text(f"NAME = {module!r}\n")
        digests[module] = corebuild.source_digest(source)
        if compiled:
            source.with_suffix(SO_SUFFIX).write_bytes(b"not a shared object")
    (tmp_path / "worker").mkdir()
    (tmp_path / "worker" / corebuild.DIGEST_FILE).write_text(json.dumps(digests))
    return tmp_path


def test_a_build_is_compiled_only_when_every_module_is_compiled_from_its_current_source(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    assert corebuild.inspect(root, MODULES) == corebuild.CoreBuild(True, "")
    corebuild.source_path(root, "pkg.slow").write_text("NAME = 'edited'\n")
    build = corebuild.inspect(root, MODULES)
    assert not build.compiled and "pkg.slow changed since it was compiled" in build.reason


def test_a_missing_compiled_file_or_digest_file_means_the_interpreted_core(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    corebuild.source_path(root, "pkg.fast").with_suffix(SO_SUFFIX).unlink()
    assert corebuild.inspect(root, MODULES).reason == "pkg.fast has no compiled file"
    corebuild.source_path(root, "pkg.slow").with_suffix(SO_SUFFIX).unlink()  # a compile that failed left its digests
    assert corebuild.inspect(root, MODULES) == corebuild.CoreBuild(False, "installed without compiling the core")
    (root / "worker" / corebuild.DIGEST_FILE).unlink()
    assert corebuild.inspect(root, MODULES) == corebuild.CoreBuild(False, "installed without compiling the core")


def test_the_source_first_finder_loads_the_py_file_where_a_compiled_file_lies_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _tree(tmp_path)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    for name in ("pkg", *MODULES):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(ImportError):  # the compiled file is found first, as Python does
        importlib.import_module("pkg.fast")
    sys.meta_path.insert(0, corebuild.SourceFirst(root, MODULES))
    assert importlib.import_module("pkg.fast").NAME == "pkg.fast"
    assert importlib.import_module("pkg.slow").__file__ == str(corebuild.source_path(root, "pkg.slow"))


def _bench(*flags: str) -> tuple[str, str]:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "core.py"), *flags], capture_output=True, text=True, check=True
    ).stdout
    build = re.search(r"^core: (\w+)", out, re.M)
    outcome = re.search(r"([\d,]+ changes \(ids \w+\), model v\d+)", out)
    assert build and outcome, out
    return build.group(1), outcome.group(1)


def test_the_compiled_core_emits_the_same_changes_as_the_interpreted_one() -> None:
    """bench/core.py's world over its first 14 days (2,000 users, 84,095 events, 4,143 changes, three models; the
    28 days of the bench took twice as long for nothing the core does differently): every change id, in order, and
    the last model."""
    if not corebuild.current().compiled:
        pytest.skip(f"the core is not compiled in this install: {corebuild.current().reason}")
    compiled, interpreted = _bench("--days", "14"), _bench("--days", "14", "--interpreted")
    assert (compiled[0], interpreted[0]) == ("compiled", "python")
    assert compiled[1] == interpreted[1]
    assert "model v0" not in compiled[1]
