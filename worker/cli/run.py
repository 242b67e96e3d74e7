"""``segment-worker run``: the Faust worker process."""

from __future__ import annotations

import asyncio
import sys

from worker.errors import ConfigError
from worker.settings import Settings
from worker.topics import prepare_topics, worker_topics


def run(settings: Settings) -> None:
    from faust.worker import Worker

    from worker.app import create_app

    created = prepare_topics(settings, worker_topics(settings))
    if created:
        print(f"segment-worker: created topics {', '.join(created)}", file=sys.stderr)
    loop = use_event_loop(settings.event_loop)
    print(f"segment-worker: event loop {loop}", file=sys.stderr)
    app = create_app(settings)
    Worker(app, loglevel=settings.log_level, redirect_stdouts=False).execute_from_commandline()


def use_event_loop(choice: str) -> str:
    """Make ``choice`` the loop of every thread's new event loop (Faust's consumer thread runs one too); returns the
    loop in use. ``auto`` takes uvloop when it is installed."""
    if choice == "asyncio":
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(
                "event_loop=uvloop needs the uvloop package: pip install 'segment-worker[uvloop]'"
            ) from None
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"
