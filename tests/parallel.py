"""CPU-bound test work two at a time (this machine has two cores), for the suite's time budget: a module's
fixture submits what its selected tests will ask for, at once, to two spawned processes. A job is a tuple of a
module-level function and its arguments. It relies on every test of a module running on one xdist worker
(``--dist loadfile`` in pyproject): any other distribution computes a module's jobs again on each worker that runs
one of its tests."""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import pytest

Key = tuple[Any, ...]  # (function, *arguments)


@contextlib.contextmanager
def submitted(
    request: pytest.FixtureRequest,
    job_of: Callable[[str, dict[str, Any]], Key | None],
    first: Callable[[Key], Any] = lambda _job: 0,
) -> Iterator[dict[Key, Future[Any]]]:
    """The job each selected test of the fixture's module needs (``job_of(test function name, its parameters)``;
    None: none), each once, ordered by ``first`` (the longest first, so that both processes finish together); the
    futures by job."""
    wanted: list[Key] = []
    for item in request.session.items:
        if getattr(item, "module", None) is not request.module:
            continue
        params = item.callspec.params if hasattr(item, "callspec") else {}
        job = job_of(getattr(item, "originalname", item.name), params)
        if job is not None and job not in wanted:
            wanted.append(job)
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield {job: pool.submit(_call, *job) for job in sorted(wanted, key=first)}


def _call(function: Callable[..., Any], *args: Any) -> Any:
    return function(*args)
