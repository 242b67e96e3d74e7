"""Worker throughput next to a raw aiokafka + orjson consume loop: the same pre-filled topic, the same broker.

    python bench/throughput.py [--users 3000] [--days 28] [--partitions 8] [--workers 1] [--runs 1]
                               [--trainer process|thread] [--no-latency] [--latency-rate R]
                               [--latency-runs N] [--blas-threads N] [--fetch-max-wait-ms MS]
                               [--batch-size N] [--batch-window S] [--producer-linger-ms MS]
                               [--changes-log FILE]

Starts the embedded broker and fills one topic with synthetic events. Times a plain aiokafka consumer that decodes
every record with orjson on it (the median of five passes); then, for each ``--workers`` count, starts that many
``segment-worker run`` processes in a new group on that same topic and times them from the first settled event to
the last (applied, and its outputs acknowledged by the broker; read from their /metrics), with the CPU time the
worker processes spent meanwhile (``process_cpu_seconds_total``): events/s, the ratio to the raw loop and CPU µs per
event. Then a latency run: a fresh worker on a fresh topic, the first third of the events to fit the first model
(and deliver its sweep: every waiting user's first persona at once), the rest produced at half the rate of the
saturated run of one worker just before it (each further latency run makes a saturated run of its own first: this
machine's speed drifts by a third within minutes, and half of a run made on a faster stretch is most of what the
worker can do on a slower one); event→change p50/p90/p99 of those, from the event's timestamp in the input topic to
its change's in the output topic (fetch, queueing, batch and outbox included), and from the worker's histogram
(which starts at the fetch's hand-off to the pipeline), with the worker process's CPU µs per event meanwhile (the
paced part is the same work every run: a run that took more CPU for it ran on a slower machine, or slower code). One
run's 257 changes make its p99 the third-worst change, which a single stall decides: ``--latency-runs N`` repeats
the latency run and also prints the quantiles of all N runs' changes. ``--changes-log FILE`` appends a JSON line per
latency run with every change's time, latency and model version (where the slow changes are: after a model's
adoption, in a stretch of lag).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord
from common import bench_settings
from confluent_kafka import Producer

from worker import codec
from worker.broker import EmbeddedBroker, free_port
from worker.kafkaio import create_topics, produce
from worker.process import WorkerProcess, metric_total
from worker.settings import Settings
from worker.synth import generate

LATENCY = "segment_worker_event_to_change_seconds"
MODEL_VERSION = "segment_worker_model_version"
SETTLED = "segment_worker_events_settled_total"
BATCH = "segment_worker_batch_seconds"
ROUND = "segment_worker_outbox_round_seconds"
STATES_WRITTEN = "segment_worker_states_written_total"
CPU = "process_cpu_seconds_total"


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


async def read_topic(bootstrap: str, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` with its timestamp (no consumer group)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    out: list[ConsumerRecord[bytes, bytes]] = []
    try:
        while batches := await consumer.getmany(timeout_ms=2000, max_records=10_000):
            for records in batches.values():
                out.extend(records)
        return out
    finally:
        await consumer.stop()


@dataclass(frozen=True, slots=True)
class ChangeTiming:
    written_ms: int  # when the worker wrote the change, in ms since the paced part began
    seconds: float  # from its event's production to then
    model_version: int | None


def end_to_end(bootstrap: str, s: Settings, since_ms: int) -> list[ChangeTiming]:
    """Each change (trigger ``event``) caused by an event produced since ``since_ms``, in the order written: seconds
    from the event's timestamp in the input topic (set by its producer) to the change's (set when the worker handed
    it to its producer, milliseconds before the broker acknowledged it). Fetching, queueing, the batch and the
    outbox are all inside; the worker's own histogram starts when a fetch reaches its pipeline."""
    produced = {
        (r.partition, r.offset): r.timestamp
        for r in asyncio.run(read_topic(bootstrap, s.input_topic))
        if r.timestamp >= since_ms
    }
    out = []
    for r in asyncio.run(read_topic(bootstrap, s.output_topic)):
        change = orjson.loads(r.value)
        at = produced.get((change["source"]["partition"], change["source"]["offset"]))
        if at is not None and change["trigger"] == "event":
            out.append(ChangeTiming(r.timestamp - since_ms, (r.timestamp - at) / 1000, change.get("model_version")))
    return sorted(out, key=lambda c: c.written_ms)


def quantile(values: list[float], q: float) -> float:
    """Of sorted ``values``."""
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def histogram_quantile(m: dict[str, float], name: str, q: float, before: dict[str, float] | None = None) -> float:
    """The upper bound of the bucket holding quantile ``q`` (of what was observed since ``before``, when given)."""
    base = before or {}
    buckets = sorted(
        (float(k.split("le=")[1]), v - base.get(k, 0.0)) for k, v in m.items() if k.startswith(name + "_bucket|")
    )
    total = buckets[-1][1] if buckets else 0
    for le, count in buckets:
        if count >= q * total:
            return le
    return float("nan")


def produce_paced(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], rate: float, linger_ms: int) -> None:
    """The records at ``rate`` per second with librdkafka (confluent-kafka): a producer in C, so that pacing them
    takes little of the two cores the worker runs on.

    ``linger_ms``: librdkafka sends a request per partition per linger; at 5 ms (its default) that was ~680 requests
    a second at 10,000 events/s, and the broker, which shares the worker's two cores here (never in a deployment),
    spent 0.56 of a core on them against 0.40 at 25 ms. The wait counts against the worker: an event's timestamp is
    taken when it is handed to the producer, before it lingers."""
    # murmur2 as Java's default partitioner (librdkafka's own default, CRC32, puts most users on another partition
    # than the worker's: each of their events would be re-routed, a second produce and consume)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": linger_ms,
            "enable.idempotence": False,
            "partitioner": "murmur2_random",
        }
    )
    started = time.monotonic()
    for i, (key, value) in enumerate(records):
        producer.produce(topic, value, key)
        if i % 100 == 0:
            producer.poll(0)
            ahead = i / rate - (time.monotonic() - started)
            if ahead > 0.002:
                time.sleep(ahead)
    producer.flush(60)


class Bench:
    def __init__(self, broker: EmbeddedBroker, tmp: str, a: argparse.Namespace) -> None:
        self.broker, self.tmp, self.a = broker, tmp, a
        self.runs = 0

    def workers(self, count: int, input_topic: str | None = None) -> tuple[Settings, list[WorkerProcess]]:
        """``count`` worker processes in a new group, ready and assigned every partition; on ``input_topic`` (a
        fresh topic when None)."""
        self.runs += 1
        a, name = self.a, f"bench-{self.runs}"
        base = bench_settings(
            self.broker,
            name,
            a.partitions,
            str(Path(self.tmp) / name),
            warmup_samples=min(1500, a.users // 2),
            state_store=a.store,
            event_loop=a.event_loop,
            trainer_process=a.trainer == "process",
            blas_threads=a.blas_threads,
            fetch_max_wait_ms=a.fetch_max_wait_ms,
            batch_size=a.batch_size,
            batch_window=a.batch_window,
            state_write_interval=a.state_write_interval,
            **({"input_topic": input_topic} if input_topic else {}),
        )
        if input_topic is None:
            create_topics(self.broker.bootstrap, {base.input_topic: a.partitions})
        workers = [
            WorkerProcess(
                base.replace(web_port=free_port(), data_dir=str(Path(self.tmp) / f"{name}-{i}")),
                dict(os.environ),
                Path(self.tmp) / f"{name}-{i}.log",
            )
            for i in range(count)
        ]
        for w in workers:
            w.wait_ready(120)
        deadline = time.monotonic() + 120
        while sum(len(w.get("/healthz")["partitions"]) for w in workers) != a.partitions:  # the group settled
            if time.monotonic() > deadline:
                sys.exit("the workers' group did not settle")
            time.sleep(0.2)
        return base, workers

    def saturated(self, count: int, topic: str, n: int) -> tuple[float, float, dict[str, float]]:
        """``count`` workers through the pre-filled ``topic``: (events/s, CPU µs per event, merged metrics)."""
        _, workers = self.workers(count, topic)
        try:
            first = None
            while True:
                m = merged(workers)
                done = metric_total(m, SETTLED)  # applied, and their outputs acknowledged by the broker
                if first is None and done > 0:
                    first = (time.perf_counter(), done, m.get(CPU, 0.0))
                if done >= n:
                    break
                time.sleep(_poll_interval(first, done, n))
            assert first is not None
            wall, events = time.perf_counter() - first[0], n - first[1]
            cpu = m.get(CPU, 0.0) - first[2]
            return events / wall, cpu / events * 1e6, m
        finally:
            for w in workers:
                w.stop()

    def saturated_run(self, count: int, topic: str, n: int, raw: float) -> float:
        """A saturated run of ``count`` workers, printed; its events/s."""
        a = self.a
        rate, cpu_us, m = self.saturated(count, topic, n)
        busy, batches = m.get(f"{BATCH}_sum", 0), m.get(f"{BATCH}_count", 0)
        print(
            f"segment-worker, {count} process(es), {a.store} store, {a.event_loop} loop, trainer in a {a.trainer}, "
            f"same topic: {rate:,.0f} events/s, ratio to the raw loop {rate / raw:.3f} (goal >= 0.15); "
            f"{cpu_us:,.0f} CPU us/event in the worker; {batches:,.0f} batches (mean {n / max(1, batches):,.0f} "
            f"events), {busy / n * 1e6:,.0f} us/event inside the batch path",
            flush=True,
        )
        return rate

    def paced(
        self, records: list[tuple[bytes, bytes]], rate: float
    ) -> tuple[dict[str, float], dict[str, float], list[ChangeTiming]]:
        """One worker on a fresh topic: the first third of the events as fast as they go (the first model is
        fitted meanwhile), then the rest at ``rate`` per second; its metrics before and after the paced part, and
        the changes of the paced part's events (:func:`end_to_end`)."""
        settings, (worker,) = self.workers(1)
        warm, rest = records[: len(records) // 3], records[len(records) // 3 :]
        try:
            produce(self.broker.bootstrap, settings.input_topic, warm)
            while not self._done(before := worker.metrics(), len(warm)) or not before.get(MODEL_VERSION):
                time.sleep(0.2)
            before = self._quiet(worker)
            since_ms = int(time.time() * 1000)
            produce_paced(self.broker.bootstrap, settings.input_topic, rest, rate, self.a.producer_linger_ms)
            while not self._done(after := worker.metrics(), len(records)):
                time.sleep(0.2)
            return before, after, end_to_end(self.broker.bootstrap, settings, since_ms)
        finally:
            worker.stop()

    @staticmethod
    def _quiet(worker: WorkerProcess) -> dict[str, float]:
        """The worker's metrics once its changes stopped coming: the first model's sweep (every waiting user placed
        at once, ~one change per user) is delivered before the paced part, whose latency it would otherwise swamp."""
        before = worker.metrics()
        while True:
            time.sleep(1.0)
            now = worker.metrics()
            if now.get(LATENCY + "_count") == before.get(LATENCY + "_count"):
                return now
            before = now

    @staticmethod
    def _done(m: dict[str, float], n: int) -> bool:
        return metric_total(m, SETTLED) >= n


def _poll_interval(first: tuple[float, float, float] | None, done: float, n: int) -> float:
    """0.1 s near the start and the end of the run; between them up to 1 s (each scrape of /metrics costs the
    worker CPU the run counts)."""
    if first is None or done <= first[1]:
        return 0.1
    rate = (done - first[1]) / max(1e-3, time.perf_counter() - first[0])
    return min(1.0, max(0.1, 0.5 * (n - done) / rate))


def merged(workers: list[WorkerProcess]) -> dict[str, float]:
    out: dict[str, float] = {}
    for w in workers:
        for k, v in w.metrics().items():
            out[k] = out.get(k, 0.0) + v
    return out


def _quantiles(seconds: list[float]) -> str:
    return (
        f"event->change (produced to written, {len(seconds):,} changes) p50 {quantile(seconds, 0.5):.3f}s, "
        f"p90 {quantile(seconds, 0.9):.3f}s, p99 {quantile(seconds, 0.99):.3f}s, max {quantile(seconds, 1.0):.3f}s"
    )


def latency_line(
    a: argparse.Namespace, target: float, seconds: list[float], before: dict[str, float], after: dict[str, float]
) -> str:
    """One latency run: its settings, the end-to-end quantiles, the worker's own histograms, how many user
    states it wrote an event and what an event cost it (the same work costs more CPU on a slower machine, and the
    paced part of a run has the same work every time: a run that costs more is a slower machine, or a regression)."""

    def grown(name: str) -> float:
        return metric_total(after, name) - metric_total(before, name)

    events = max(1.0, grown(SETTLED))
    cpu_us, batch_us = grown(CPU) / events * 1e6, grown(f"{BATCH}_sum") / events * 1e6
    return (
        f"producer linger {a.producer_linger_ms} ms, BLAS threads {a.blas_threads or 'default'}, "
        f"states written every {a.state_write_interval:g} s ({grown(STATES_WRITTEN) / events:.2f} an event), "
        f"fetch wait {a.fetch_max_wait_ms} ms, "
        f"batches of at most {a.batch_size:,} within {a.batch_window * 1000:g} ms, trainer in a {a.trainer}, "
        f"at {target:,.0f} events/s, after the first model: {_quantiles(seconds)}; from the fetch's hand-off "
        f"(the worker's histogram, bucket bounds) p50 <= {histogram_quantile(after, LATENCY, 0.5, before)}s, "
        f"p99 <= {histogram_quantile(after, LATENCY, 0.99, before)}s; meanwhile "
        + ", ".join(
            f"{label} p50 <= {histogram_quantile(after, name, 0.5, before)}s, "
            f"p99 <= {histogram_quantile(after, name, 0.99, before)}s"
            for label, name in (("a batch", BATCH), ("an outbox round", ROUND))
        )
        + f"; {cpu_us:,.0f} CPU us/event in the worker, {batch_us:,.0f} us/event inside the batch path"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--days", type=float, default=28.0)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--workers", type=int, nargs="+", default=[1], help="worker process counts to run")
    ap.add_argument("--runs", type=int, default=1, help="saturated runs per worker count")
    ap.add_argument("--no-latency", action="store_true", help="skip the run at half the saturated rate")
    ap.add_argument(
        "--latency-rate",
        type=float,
        help="events/s of the latency runs (default: half the saturated run of one worker made just before each)",
    )
    ap.add_argument(
        "--latency-runs",
        type=int,
        default=1,
        help="latency runs, each a fresh worker on a fresh topic; more than one also prints their pooled quantiles "
        "(one run's p99 is its third-worst change of 257)",
    )
    ap.add_argument("--store", choices=["memory", "rocksdb"], default=Settings.state_store, help="state_store")
    ap.add_argument("--event-loop", choices=["auto", "uvloop", "asyncio"], default=Settings.event_loop)
    ap.add_argument(
        "--trainer", choices=["process", "thread"], default="process" if Settings.trainer_process else "thread"
    )
    ap.add_argument("--blas-threads", type=int, default=Settings.blas_threads, help="blas_threads (0: the library's)")
    ap.add_argument("--fetch-max-wait-ms", type=int, default=Settings.fetch_max_wait_ms, help="fetch_max_wait_ms")
    ap.add_argument("--batch-size", type=int, default=Settings.batch_size, help="batch_size")
    ap.add_argument("--batch-window", type=float, default=Settings.batch_window, help="batch_window (seconds)")
    ap.add_argument(
        "--state-write-interval",
        type=float,
        default=Settings.state_write_interval,
        help="state_write_interval (seconds; 0: states written with every batch)",
    )
    ap.add_argument(
        "--producer-linger-ms",
        type=int,
        default=25,
        help="linger.ms of the latency run's producer (its wait counts in the latency; see produce_paced)",
    )
    ap.add_argument("--changes-log", type=Path, help="append each latency run's changes to this file (JSON lines)")
    a = ap.parse_args()
    if not a.runs and a.no_latency:
        ap.error("--runs 0 with --no-latency runs nothing")
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        pop = generate(a.users, a.days, seed=3)
        records = [(e["user_id"].encode(), codec.dumps(e)) for e in pop.events]
        n = len(records)
        topic = "bench-prefilled"
        create_topics(broker.bootstrap, {topic: a.partitions})
        produce(broker.bootstrap, topic, records)
        passes = sorted(asyncio.run(raw_loop(broker.bootstrap, topic, n)) for _ in range(5))
        raw = passes[2]  # the median of five passes: one pass takes about a second and varies by half
        print(
            f"raw aiokafka + orjson loop: {raw:,.0f} events/s over {n:,} events, {a.partitions} partitions "
            f"(median of 5 passes, {passes[0]:,.0f}..{passes[-1]:,.0f})"
        )
        bench = Bench(broker, tmp, a)
        last = None  # the rate of the newest saturated run, when it was of one worker
        for count in a.workers:
            for _ in range(a.runs):
                rate = bench.saturated_run(count, topic, n, raw)
                last = rate if count == 1 else None
        if not a.no_latency:
            pooled: list[float] = []
            for i in range(a.latency_runs):
                if a.latency_rate:
                    target = a.latency_rate
                else:  # half of what one worker does on the machine as it is now (its speed drifts within minutes)
                    if i or last is None:
                        last = bench.saturated_run(1, topic, n, raw)
                    target = 0.5 * last
                before, after, changes = bench.paced(records, target)
                seconds = sorted(c.seconds for c in changes)
                pooled = sorted(pooled + seconds)
                if a.changes_log:
                    with a.changes_log.open("ab") as log:
                        log.write(codec.dumps({"rate": target, "changes": changes}) + b"\n")
                print(latency_line(a, target, seconds, before, after), flush=True)
            if a.latency_runs > 1:
                print(f"pooled over {a.latency_runs} latency runs: {_quantiles(pooled)}")
    sys.exit(0)


if __name__ == "__main__":
    main()
