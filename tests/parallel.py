"""CPU-bound test work two at a time (this machine has two cores), for the suite's time budget: a module's
fixture submits what its selected tests will ask for, at once, to two spawned processes."""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

import pytest

T = TypeVar("T")
Key = tuple[Hashable, ...]


@contextlib.contextmanager
def submitted(
    request: pytest.FixtureRequest,
    work: Callable[..., T],
    args_of: Callable[[str, dict[str, Any]], Key | None],
    first: Callable[[Key], Any] = lambda _args: 0,
) -> Iterator[dict[Key, Future[T]]]:
    """``work(*args)`` for the ``args`` each selected test of the fixture's module needs (``args_of(test function
    name, its parameters)``; None: nothing), each once, ordered by ``first`` (the longest first, so that both
    processes finish together); the futures by ``args``."""
    wanted: list[Key] = []
    for item in request.session.items:
        if getattr(item, "module", None) is not request.module:
            continue
        params = item.callspec.params if hasattr(item, "callspec") else {}
        args = args_of(getattr(item, "originalname", item.name), params)
        if args is not None and args not in wanted:
            wanted.append(args)
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield {args: pool.submit(work, *args) for args in sorted(wanted, key=first)}
