"""Soak: a steady load for a long time; consumer lag must not grow and memory must stay flat.

    python bench/soak.py [--minutes 10] [--rate 1000] [--users 3000] [--partitions 4]

Starts the embedded broker and one ``segment-worker run``, then produces ``--rate`` events/s for ``--minutes``
from a fixed population (the synthetic world replayed over and over, each pass later in event time, so the users
are the same and their state stops growing once every user has been seen). Every ``--every`` seconds it prints
the group's lag (input and re-routing topics), the worker's resident memory, users held and events processed.

Verdict (exit status 1 when either fails):
- lag: over the second half, the least-squares slope of the lag is under 1 % of the input rate and the largest lag
  is under ``--max-lag-seconds`` of input;
- memory: the median resident memory of the last quarter is within ``--memory-growth`` of the median of the second
  quarter. (Warm-up ends well after every user was seen: the trainer's sample window, the model and the caches fill
  over the first minutes; medians keep a transient allocation peak from deciding. The growth since every user was
  seen is printed too.)
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from common import bench_settings

from worker import codec
from worker.broker import EmbeddedBroker
from worker.events.timefmt import parse_timestamp
from worker.kafkaio import create_topics, group_lag, produce
from worker.process import WorkerProcess, metric_total
from worker.synth import generate

_DAY_MS = 86_400_000
_SESSION_MS = 6 * 3_600_000


def replayed(users: int, days: float, passes: int) -> Iterator[tuple[bytes, bytes]]:
    """The world's events ``passes`` times, each pass shifted one world span later, ending before today."""
    span = int(days * _DAY_MS)
    start = int(time.time() * 1000) - (passes + 1) * span
    pop = generate(users, days, seed=5, start_ms=start)
    base = [
        (parse_timestamp(e["timestamp"]) if isinstance(e["timestamp"], str) else e["timestamp"], e) for e in pop.events
    ]
    for k in range(passes):
        for ts, e in base:
            t = ts + k * span
            uid = e["user_id"]
            yield uid.encode(), codec.dumps({**e, "timestamp": t, "session_id": f"{uid}-{t // _SESSION_MS}"})


def slope(points: list[tuple[float, float]]) -> float:
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=1000.0, help="input events per second")
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--days", type=float, default=28.0, help="event-time span of one pass over the world")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--max-lag-seconds", type=float, default=5.0)
    ap.add_argument("--memory-growth", type=float, default=0.05)
    a = ap.parse_args()
    duration = a.minutes * 60
    one_pass = len(generate(a.users, a.days, seed=5).events)
    passes = int(a.rate * duration / one_pass) + 2
    with tempfile.TemporaryDirectory(prefix="segment-worker-soak-") as tmp, EmbeddedBroker() as broker:
        s = bench_settings(broker, "soak", a.partitions, str(Path(tmp) / "data"))
        create_topics(broker.bootstrap, {s.input_topic: a.partitions})
        worker = WorkerProcess(s, dict(os.environ), Path(tmp) / "worker.log")
        worker.wait_ready(120)
        records = itertools.islice(replayed(a.users, a.days, passes), int(a.rate * duration))
        producer = threading.Thread(target=produce, args=(broker.bootstrap, s.input_topic, records, a.rate))
        started = time.monotonic()
        producer.start()
        topics = [s.input_topic, f"{s.app_id}-events-by-user"]
        rows: list[tuple[float, int, float, float, float]] = []  # t, lag, rss, users, processed
        print(f"{'t (s)':>7} {'lag':>8} {'RSS MiB':>8} {'users':>7} {'processed':>10} {'events/s':>9}", flush=True)
        try:
            while producer.is_alive():
                time.sleep(a.every)
                if worker.proc.poll() is not None:
                    sys.exit(f"worker exited with {worker.proc.returncode}; see {worker.log_path}")
                m = worker.metrics()
                lag = sum(group_lag(broker.bootstrap, s.app_id, topics).values())
                t = time.monotonic() - started
                processed = metric_total(m, "segment_worker_events_processed_total")
                rate = (processed - rows[-1][4]) / (t - rows[-1][0]) if rows else processed / t
                rows.append(
                    (t, lag, m.get("process_resident_memory_bytes", 0.0), m.get("segment_worker_users", 0), processed)
                )
                print(
                    f"{t:7.0f} {lag:8,d} {rows[-1][2] / 2**20:8.0f} {rows[-1][3]:7,.0f} {processed:10,.0f} "
                    f"{rate:9,.0f}",
                    flush=True,
                )
        finally:
            producer.join()
            worker.stop()
    second_half = [r for r in rows if r[0] >= duration / 2]
    lag_slope = slope([(r[0], r[1]) for r in second_half])
    max_lag = max((r[1] for r in second_half), default=0)
    saturated = next((r for r in rows if r[3] >= a.users * 0.99), None)
    settled = [r[2] for r in rows if duration / 4 <= r[0] < duration / 2]
    last = [r[2] for r in rows if r[0] >= duration * 3 / 4]
    growth = statistics.median(last) / statistics.median(settled) - 1 if settled and last else float("nan")
    lag_ok = lag_slope < 0.01 * a.rate and max_lag < a.max_lag_seconds * a.rate
    mem_ok = saturated is not None and growth <= a.memory_growth
    print(
        f"lag over the second half: slope {lag_slope:+,.1f} records/s, max {max_lag:,} records "
        f"({max_lag / a.rate:.1f} s of input) -> {'flat' if lag_ok else 'GROWING'}"
    )
    if saturated is None or not settled or not last:
        print("memory: the worker never held every user, or the run was too short; no verdict")
        mem_ok = False
    else:
        print(
            f"memory: median {statistics.median(settled) / 2**20:,.0f} MiB in the second quarter, "
            f"{statistics.median(last) / 2**20:,.0f} MiB in the last ({growth:+.1%}) -> "
            f"{'flat' if mem_ok else 'GROWING'}; {saturated[2] / 2**20:,.0f} MiB once every user was seen "
            f"(t={saturated[0]:.0f}s), {rows[-1][2] / 2**20:,.0f} MiB at the end"
        )
    sys.exit(0 if lag_ok and mem_ok else 1)


if __name__ == "__main__":
    main()
