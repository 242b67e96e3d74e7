"""``segment-worker run``: the Faust worker process."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import TYPE_CHECKING

from worker.errors import ConfigError
from worker.settings import Settings
from worker.topics import prepare_topics, worker_topics

if TYPE_CHECKING:
    import faust
    from faust.worker import Worker

# library loggers whose INFO is noise here: every range read beside the group (the trainer's samples, a probe, a
# hole's fill) assigns partitions to a consumer of its own, and aiokafka logs each assignment, which Faust's log
# format prints as a table (~130 of them a minute while the trainer reads: most of the log)
QUIET_LOGGERS = ("aiokafka.consumer.subscription_state",)


def run(settings: Settings) -> None:
    from worker.app import create_app
    from worker.runtime.collector import settle_after_start
    from worker.runtime.fitting import limit_blas

    created = prepare_topics(settings, worker_topics(settings))
    if created:
        print(f"segment-worker: created topics {', '.join(created)}", file=sys.stderr)
    limit_blas(settings.blas_threads)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    loop = use_event_loop(settings.event_loop)
    print(f"segment-worker: event loop {loop}", file=sys.stderr)
    app = create_app(settings)
    settle_after_start()
    faust_worker(app, settings.log_level).execute_from_commandline()


def faust_worker(app: faust.App, log_level: str) -> Worker:
    """Faust's worker without its terminal spinner: to spin it on every log record, Faust sets the root logger to
    DEBUG whenever the level asked for is ``warn`` or above, and every library's debug call then builds a record
    (measured: aiokafka's fetcher alone, per fetch, a few per cent of the worker's CPU)."""
    from faust.worker import Worker

    worker = Worker(app, loglevel=log_level, redirect_stdouts=False)
    worker.spinner = None
    return worker


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
