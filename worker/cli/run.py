"""``segment-worker run``: the Faust worker process."""

from __future__ import annotations

from worker.settings import Settings


def run(settings: Settings) -> None:
    from faust.worker import Worker

    from worker.app import create_app

    app = create_app(settings)
    Worker(app, loglevel=settings.log_level, redirect_stdouts=False).execute_from_commandline()
