"""``segment-worker run``: its event loop choice, its Faust worker."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator

import pytest
import uvloop

from worker.cli.run import faust_worker, use_event_loop
from worker.errors import ConfigError


@pytest.fixture(autouse=True)
def default_policy() -> Iterator[None]:
    asyncio.set_event_loop_policy(None)
    yield
    asyncio.set_event_loop_policy(None)


def test_auto_takes_uvloop_when_installed_for_every_new_loop() -> None:
    assert use_event_loop("auto") == "uvloop"
    loop = asyncio.new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_asyncio_declines_uvloop() -> None:
    assert use_event_loop("asyncio") == "asyncio"
    assert not isinstance(asyncio.get_event_loop_policy(), uvloop.EventLoopPolicy)


def test_without_uvloop_auto_falls_back_and_uvloop_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert use_event_loop("auto") == "asyncio"
    with pytest.raises(ConfigError, match=r"pip install 'segment-worker\[uvloop\]'"):
        use_event_loop("uvloop")


@pytest.mark.parametrize("level", ["warn", "error", "info"])
def test_the_root_logger_keeps_the_level_asked_for(level: str) -> None:
    """Faust's spinner would set the root logger to DEBUG at ``warn`` and above: every library's debug call would
    build a record on the hot path."""
    import logging

    import faust

    root = logging.getLogger()
    before, handlers = root.level, list(root.handlers)
    number = logging.getLevelName(level.upper().replace("WARN", "WARNING"))
    try:
        root.setLevel(number)
        worker = faust_worker(faust.App("run-test"), level)
        worker.on_setup_root_logger(root, number)
        assert root.level == number
        assert not any(type(h).__name__ == "SpinnerHandler" for h in root.handlers)
    finally:
        root.setLevel(before)
        root.handlers[:] = handlers
