"""Worker throughput next to a raw aiokafka + orjson consume loop, same broker, same topic.

    python bench/throughput.py [--users 3000] [--days 28] [--partitions 4]

Starts the embedded broker, fills one topic with synthetic events, times (1) a plain aiokafka consumer that
decodes every record with orjson, (2) `segment-worker run` processing the same topic from the start (time from
its first processed event to the last, read from its /metrics), and prints both rates, their ratio and the
worker's event→change latency percentiles from its histogram.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--days", type=float, default=28.0)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=Settings.batch_size)
    ap.add_argument("--batch-window", type=float, default=Settings.batch_window)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        topic = "bench-events"
        pop = generate(a.users, a.days, seed=3)
        n = len(pop.events)
        create_topics(broker.bootstrap, {topic: a.partitions})
        produce(broker.bootstrap, topic, ((e["user_id"].encode(), codec.dumps(e)) for e in pop.events))
        raw = asyncio.run(raw_loop(broker.bootstrap, topic, n))
        print(f"raw aiokafka + orjson loop: {raw:,.0f} events/s over {n:,} events", flush=True)
        s = Settings(
            broker=broker.url,
            app_id="bench",
            input_topic=topic,
            partitions=a.partitions,
            web_port=free_port(),
            data_dir=str(Path(tmp) / "data"),
            log_level="warn",
            warmup_samples=min(1500, a.users // 2),
            batch_size=a.batch_size,
            batch_window=a.batch_window,
        )
        w = WorkerProcess(s, dict(os.environ), Path(tmp) / "worker.log")
        try:
            w.wait_ready(120)
            first = None
            while True:
                m = w.metrics()
                done = metric_total(m, "segment_worker_events_processed_total")
                if first is None and done > 0:
                    first = (time.perf_counter(), done)
                if done >= n:
                    break
                time.sleep(0.2)
            assert first is not None
            rate = (n - first[1]) / (time.perf_counter() - first[0])
            p50 = histogram_quantile(m, "segment_worker_event_to_change_seconds", 0.5)
            p99 = histogram_quantile(m, "segment_worker_event_to_change_seconds", 0.99)
        finally:
            w.stop()
        print(f"segment-worker (1 process, {a.partitions} partitions): {rate:,.0f} events/s", flush=True)
        print(f"ratio worker/raw: {rate / raw:.3f} (goal >= 0.15)")
        batches = m.get("segment_worker_batch_seconds_count", 0)
        busy = m.get("segment_worker_batch_seconds_sum", 0)
        print(f"batches: {batches:,.0f} (mean {n / max(1, batches):,.0f} events), {busy:.1f}s inside the core")
        print(f"event->change latency: p50 <= {p50}s, p99 <= {p99}s (histogram bucket bounds)")
    sys.exit(0)


if __name__ == "__main__":
    main()
