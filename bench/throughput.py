"""Worker throughput next to a raw aiokafka + orjson consume loop, same broker, same topic.

    python bench/throughput.py [--users 3000] [--days 28] [--partitions 4] [--workers 1 2]

Starts the embedded broker, fills a topic with synthetic events and times a plain aiokafka consumer that decodes
every record with orjson. Then, for each ``--workers`` count, starts that many ``segment-worker run`` processes in
one group on a fresh topic, waits until the group has settled, writes the same events, and times them from the
first processed event to the last (read from their /metrics); prints the rates, the ratio to the raw loop and the
event→change latency percentiles from the workers' merged histograms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer
from common import bench_settings

from worker import codec
from worker.broker import EmbeddedBroker, free_port
from worker.kafkaio import create_topics, produce
from worker.process import WorkerProcess, metric_total
from worker.settings import Settings
from worker.synth import generate


async def raw_loop(bootstrap: str, topic: str, n: int) -> float:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        max_poll_records=2000,
    )
    await consumer.start()
    seen = 0
    started = 0.0
    try:
        while seen < n:
            batches = await consumer.getmany(timeout_ms=1000, max_records=2000)
            for records in batches.values():
                if not started:
                    started = time.perf_counter()
                for r in records:
                    orjson.loads(r.value)
                seen += len(records)
        return n / (time.perf_counter() - started)
    finally:
        await consumer.stop()


def histogram_quantile(m: dict[str, float], name: str, q: float) -> float:
    buckets = sorted((float(k.split("le=")[1]), v) for k, v in m.items() if k.startswith(name + "_bucket|"))
    total = buckets[-1][1] if buckets else 0
    for le, count in buckets:
        if count >= q * total:
            return le
    return float("nan")


def run_workers(
    broker: EmbeddedBroker, tmp: str, a: argparse.Namespace, count: int, records: list[tuple[bytes, bytes]]
) -> tuple[float, dict[str, float]]:
    """``count`` worker processes on a fresh topic; returns (events/s, merged metrics of the workers)."""
    base = bench_settings(
        broker,
        f"bench-{count}",
        a.partitions,
        str(Path(tmp) / f"data-{count}"),
        warmup_samples=min(1500, a.users // 2),
        batch_size=a.batch_size,
        batch_window=a.batch_window,
        state_store=a.store,
    )
    topic = base.input_topic
    create_topics(broker.bootstrap, {topic: a.partitions})
    workers = [
        WorkerProcess(
            base.replace(web_port=free_port(), data_dir=str(Path(tmp) / f"data-{count}-{i}")),
            dict(os.environ),
            Path(tmp) / f"worker-{count}-{i}.log",
        )
        for i in range(count)
    ]
    try:
        for w in workers:
            w.wait_ready(120)
        deadline = time.monotonic() + 120
        while sum(len(w.get("/healthz")["partitions"]) for w in workers) != a.partitions:  # the group settled
            if time.monotonic() > deadline:
                sys.exit("the workers' group did not settle")
            time.sleep(0.5)
        n = len(records)
        threading.Thread(target=produce, args=(broker.bootstrap, topic, records), daemon=True).start()
        first = None
        while True:
            merged: dict[str, float] = {}
            for w in workers:
                for k, v in w.metrics().items():
                    merged[k] = merged.get(k, 0.0) + v
            done = metric_total(merged, "segment_worker_events_processed_total")
            if first is None and done > 0:
                first = (time.perf_counter(), done)
            if done >= n:
                break
            time.sleep(0.2)
        assert first is not None
        return (n - first[1]) / (time.perf_counter() - first[0]), merged
    finally:
        for w in workers:
            w.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--days", type=float, default=28.0)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker process counts to run")
    ap.add_argument("--batch-size", type=int, default=Settings.batch_size)
    ap.add_argument("--batch-window", type=float, default=Settings.batch_window)
    ap.add_argument("--store", choices=["memory", "rocksdb"], default=Settings.state_store, help="state_store")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        pop = generate(a.users, a.days, seed=3)
        records = [(e["user_id"].encode(), codec.dumps(e)) for e in pop.events]
        n = len(records)
        create_topics(broker.bootstrap, {"bench-raw": a.partitions})
        produce(broker.bootstrap, "bench-raw", records)
        raw = asyncio.run(raw_loop(broker.bootstrap, "bench-raw", n))
        print(f"raw aiokafka + orjson loop: {raw:,.0f} events/s over {n:,} events", flush=True)
        for count in a.workers:
            rate, m = run_workers(broker, tmp, a, count, records)
            p50 = histogram_quantile(m, "segment_worker_event_to_change_seconds", 0.5)
            p99 = histogram_quantile(m, "segment_worker_event_to_change_seconds", 0.99)
            batches = m.get("segment_worker_batch_seconds_count", 0)
            busy = m.get("segment_worker_batch_seconds_sum", 0)
            print(
                f"segment-worker, {count} process(es), {a.partitions} partitions, {a.store} store: "
                f"{rate:,.0f} events/s "
                f"(ratio to the raw loop {rate / raw:.3f}; goal >= 0.15)\n"
                f"  batches: {batches:,.0f} (mean {n / max(1, batches):,.0f} events), {busy:.1f}s inside the core; "
                f"event->change latency p50 <= {p50}s, p99 <= {p99}s (histogram bucket bounds)",
                flush=True,
            )
    sys.exit(0)


if __name__ == "__main__":
    main()
