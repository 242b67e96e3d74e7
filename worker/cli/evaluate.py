"""``segment-worker evaluate``: print the quality table (and optionally JSON) of scenario worlds."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from worker import codec
from worker.cli.demo import printer
from worker.evaluation.run import Plan, evaluate, table, target_summary
from worker.settings import Settings


def evaluate_cmd(args: argparse.Namespace, settings: Settings, environ: dict[str, str]) -> int:
    started = time.monotonic()
    say = printer(started)

    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    plan = Plan(args.scenarios.split(","), seeds, args.users, args.days, args.engine)
    rows = evaluate(plan, settings, environ, say, args.timeout)
    print()
    print(table(rows))
    summary, ok = target_summary(rows)
    print("\ntargets (default settings are meant to meet them in every world):")
    print(summary)
    print(f"\n{len(rows)} runs in {time.monotonic() - started:.0f}s ({plan.engine} engine)", flush=True)
    if args.json_out:
        Path(args.json_out).write_bytes(codec.dumps_pretty({"plan": vars(args) | {}, "runs": rows, "targets_met": ok}))
    return 0 if (ok or not args.strict) else 1
