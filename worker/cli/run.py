"""``segment-worker run``: the Faust worker process."""

from __future__ import annotations

import sys

from worker.settings import Settings
from worker.topics import prepare_topics, worker_topics


def run(settings: Settings) -> None:
    from faust.worker import Worker

    from worker.app import create_app

    created = prepare_topics(settings, worker_topics(settings))
    if created:
        print(f"segment-worker: created topics {', '.join(created)}", file=sys.stderr)
    app = create_app(settings)
    Worker(app, loglevel=settings.log_level, redirect_stdouts=False).execute_from_commandline()
