"""``segment-worker`` entry point. The only place that reads ``os.environ`` (once, into :class:`Settings`)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import Any

from worker.errors import ConfigError, SegmentWorkerError
from worker.settings import ENV_PREFIX, Settings
from worker.synth.scenarios import DEFAULT_SCENARIOS, SCENARIOS


def _add_settings_flags(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    group = parser.add_argument_group("settings (each also from the environment, SEGMENT_WORKER_<NAME>)")
    for f in dataclasses.fields(Settings):
        if f.name in skip:
            continue
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            dest="set_" + f.name,
            default=None,
            metavar="VALUE",
            help=f"{f.metadata.get('help', '')} [env {ENV_PREFIX}{f.name.upper()}, default {f.default!r}]",
        )


def _settings(args: argparse.Namespace, environ: dict[str, str], **defaults: Any) -> Settings:
    flags = {k.removeprefix("set_"): v for k, v in vars(args).items() if k.startswith("set_") and v is not None}
    return Settings.load(environ, {**defaults, **flags})


def _add_demo(sub: Any) -> None:
    demo = sub.add_parser("demo", help="embedded broker + synthetic users + the worker, with a summary")
    demo.add_argument("--users", type=int, default=1000, help="synthetic users (default 1000)")
    demo.add_argument("--days", type=float, default=28.0, help="days of event time (default 28)")
    demo.add_argument("--seed", type=int, default=1, help="population seed")
    demo.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    demo.add_argument("--json", dest="json_out", default=None, help="also write the summary as JSON to FILE")
    demo.add_argument(
        "--page",
        dest="page_out",
        default="personas.html",
        help="write the run's personas page (segment-worker report) to FILE; '' for none (default personas.html)",
    )
    _add_settings_flags(demo, skip=("broker",))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segment-worker",
        description="Streaming customer segmentation on Kafka: personas per user, segment-change events.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the worker against a Kafka cluster")
    _add_settings_flags(run)

    _add_demo(sub)
    gen = sub.add_parser("generate", help="synthetic events with known personas, to JSONL or a topic")
    gen.add_argument("--users", type=int, default=1000)
    gen.add_argument("--days", type=float, default=28.0)
    gen.add_argument("--seed", type=int, default=1)
    gen.add_argument("--switch-share", type=float, default=0.10, help="share of users that switch persona")
    gen.add_argument("--silent-share", type=float, default=0.08, help="share of users that go silent")
    gen.add_argument("--output", "-o", default=None, help="JSONL file ('-' for stdout); else --topic")
    gen.add_argument("--topic", default=None, help="produce to this topic (of --broker)")
    gen.add_argument("--truth", default=None, help="write the ground truth (JSON) to this file")
    gen.add_argument("--broker", default=None, help="kafka://host:port (else SEGMENT_WORKER_BROKER)")

    trig = sub.add_parser("triggers", help="segment changes -> notifications, by a rules file (YAML)")
    trig.add_argument("--rules", default=None, help="rules file (else SEGMENT_WORKER_TRIGGER_RULES)")
    _add_settings_flags(trig, skip=("trigger_rules",))
    rep = sub.add_parser("replay", help="JSONL or CSV file of events -> topic, as fast as possible or at a rate")
    rep.add_argument("file", help="events file (.jsonl/.json lines or .csv)")
    rep.add_argument("--topic", default=None, help="target topic (default: the input topic setting)")
    rep.add_argument("--broker", default=None, help="kafka://host:port (else SEGMENT_WORKER_BROKER)")
    rep.add_argument("--rate", type=float, default=None, help="events per second (default: as fast as possible)")
    rep.add_argument("--format", choices=("jsonl", "csv"), default=None, help="default: by file extension")
    rep.add_argument(
        "--shadow",
        metavar="SETTINGS_FILE",
        default=None,
        help="send nothing: run the file through the current settings and through these (NAME=value lines) "
        "in-process, and report which users would migrate differently",
    )
    rep.add_argument("--shadow-json", default=None, help="with --shadow: write the full comparison to FILE")
    page = sub.add_parser("report", help="the personas page (cards, flows, lifecycle) of the group, as one HTML file")
    page.add_argument("--output", "-o", default="personas.html", help="HTML file to write (default personas.html)")
    page.add_argument(
        "--window", default="all", help="flows over the last DURATION of event time (7d, 12h, ...; default all)"
    )
    _add_settings_flags(page)
    erase = sub.add_parser("erase", help="request the erasure of users (erasure-request.v1 on the erasure topic)")
    erase.add_argument("user_ids", nargs="+", metavar="USER_ID", help="raw user ids (pseudonymised by the worker)")
    erase.add_argument("--request-id", default=None, help="your reference, carried in each request")
    erase.add_argument("--broker", default=None, help="kafka://host:port (else SEGMENT_WORKER_BROKER)")
    ev = sub.add_parser("evaluate", help="scenario worlds through the segmentation, scored against ground truth")
    ev.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma list of: {', '.join(SCENARIOS)}",
    )
    ev.add_argument("--seeds", default="1,2", help="comma list of seeds (each draws new personas and users)")
    ev.add_argument("--users", type=int, default=1000, help="users per world (default 1000)")
    ev.add_argument("--days", type=float, default=28.0, help="days of event time (default 28)")
    ev.add_argument(
        "--engine",
        choices=("pipeline", "core"),
        default="pipeline",
        help="pipeline: embedded broker + worker process (the production path); core: the same code in-process",
    )
    ev.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds")
    ev.add_argument("--json", dest="json_out", default=None, help="also write the results as JSON to FILE")
    ev.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    _add_settings_flags(ev, skip=("broker",))
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    environ = dict(os.environ)
    try:
        if args.command == "run":
            from worker.cli.run import run

            run(_settings(args, environ))
        elif args.command == "demo":
            from worker.cli.demo import demo

            code = demo(
                _settings(args, environ, app_id="segment-worker-demo", partitions=4),
                environ,
                users=args.users,
                days=args.days,
                seed=args.seed,
                timeout=args.timeout,
                json_out=args.json_out,
                page_out=args.page_out or None,
            )
            sys.exit(code)
        elif args.command == "evaluate":
            from worker.cli.evaluate import evaluate_cmd

            sys.exit(evaluate_cmd(args, _settings(args, environ, partitions=4), environ))
        elif args.command == "generate":
            from worker.cli.tools import generate_cmd

            generate_cmd(args, Settings.load(environ, {"broker": args.broker}))
        elif args.command == "triggers":
            from worker.triggers import load_rules
            from worker.triggers.service import serve

            settings = _settings(args, environ)
            if args.rules:
                settings = settings.replace(trigger_rules=args.rules)
            if not settings.trigger_rules:
                raise ConfigError("triggers needs a rules file: --rules FILE or SEGMENT_WORKER_TRIGGER_RULES")
            serve(settings, load_rules(settings.trigger_rules))
        elif args.command == "report":
            from worker.cli.report import report

            print(report(_settings(args, environ), args.output, args.window))
        elif args.command == "erase":
            from worker.cli.tools import erase_cmd

            erase_cmd(args, Settings.load(environ, {"broker": args.broker}))
        elif args.command == "replay":
            from worker.cli.tools import replay_cmd

            replay_cmd(args, Settings.load(environ, {"broker": args.broker}), environ)
    except SegmentWorkerError as exc:
        print(f"segment-worker: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
