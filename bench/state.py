"""State at scale: bytes of state per user, and how long a worker takes to recover many users' state.

python bench/state.py [--users 2000] [--recover 1000000] [--store memory|rocksdb]

1. Runs a synthetic population through the core and measures each user's changelog record (key + value, exactly
   as the worker writes it): mean, p50, p99 bytes per user.
2. Writes ``--recover`` users' state records (copies of the measured ones under new user ids) into a worker's
   ``users`` changelog on the embedded broker, starts a worker process on it, and times start → ready (group
   joined, changelog recovered, every user in state). With ``--store rocksdb`` the worker also writes its local
   copy while reading, and is then started again: the restart reads the copy and the changelog after it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import bench_settings

from worker import codec
from worker.broker import EmbeddedBroker
from worker.changes import InputRecord, Segmenter
from worker.clustering.trainer import Trainer
from worker.features import wire
from worker.features.state import UserState
from worker.kafkaio import create_topics, producer
from worker.process import WorkerProcess
from worker.routing import partitioner
from worker.settings import Settings
from worker.synth import generate


def measured_states(users: int, days: float) -> dict[str, bytes]:
    """user id → the changelog value the worker writes for that user after the population's events: features,
    persona and recent change history, as the core leaves them with the trainer's models applied."""
    s = Settings(warmup_samples=min(Settings.warmup_samples, users // 2))
    pop = generate(users, days, seed=1)
    store: dict[str, UserState] = {}
    seg = Segmenter(s, store, lambda _u: 0)
    trainer = Trainer(s)
    raw = [codec.dumps(e) for e in pop.events]
    for i in range(0, len(raw), 1000):
        recs = [InputRecord(v, None, 0, i + j, 0, i + j, 0.0) for j, v in enumerate(raw[i : i + 1000])]
        res = seg.process(recs, 2**62, 0.0)
        store.update(res.dirty)
        snap = trainer.add((u, UserState.from_fields(w), t) for u, w, t in (codec.loads(b) for b in res.samples))
        if snap is not None:
            first = seg.model is None
            seg.set_model(snap)
            if first:
                store.update(seg.sweep({0}, 0.0).dirty)
    with_persona = sum(1 for st in store.values() if st.segment)
    print(f"{with_persona:,} of {len(store):,} users with a persona; model v{seg.model.version if seg.model else 0}")
    return {uid: wire.encode(state) for uid, state in store.items()}


def recovery(values: list[bytes], users: int, partitions: int, store: str) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="segment-worker-bench-") as tmp,
        EmbeddedBroker(log_file=Path(tmp) / "broker.log") as broker,
    ):
        s = bench_settings(
            broker,
            "bench-state",
            partitions,
            str(Path(tmp) / "data"),
            session_timeout=6.0,
            log_level="info",
            state_store=store,
        )
        changelog = f"{s.app_id}-users-changelog"
        create_topics(broker.bootstrap, {changelog: partitions, s.input_topic: partitions})
        part = partitioner(partitions)
        started = time.monotonic()

        prod = producer(broker.bootstrap)
        total = 0
        for i in range(users):
            uid = f"user-{i:08d}"
            key, value = codec.dumps(uid), values[i % len(values)]  # table keys are JSON strings
            prod.send(changelog, key=key, value=value, partition=part(uid))
            total += len(key) + len(value)
        prod.flush(300)
        prod.close()
        print(f"wrote {users:,} state records ({total / 1e6:,.0f} MB) in {time.monotonic() - started:.1f}s", flush=True)
        timed_start(s, users, Path(tmp) / "worker-1.log", "from the changelog")
        if store == "rocksdb":  # the same worker again: its local copy, and the changelog after it
            timed_start(s, users, Path(tmp) / "worker-2.log", "restart, from the local copy")


def timed_start(s: Settings, users: int, log: Path, what: str) -> None:
    """Start a worker, time start → every user in state, print the worker's own account and its memory."""
    t0 = time.monotonic()
    worker = WorkerProcess(s, dict(os.environ), log)
    try:
        worker.wait_ready(600)
        # every user in state and the worker done with recovery (it logs the partitions it then owns)
        while worker.get("/healthz")["users"] < users or "owning partitions" not in log.read_text():
            if time.monotonic() - t0 > 900:
                sys.exit("worker did not hold every user after 900 s")
            time.sleep(0.2)
        took = time.monotonic() - t0
        rss = worker.metrics().get("process_resident_memory_bytes", 0.0)
    finally:
        worker.stop()
    for line in log.read_text().splitlines():  # the worker's own account of the reads
        if "changelog records of partitions" in line or "owning partitions" in line:
            print("  worker:", line.split("[INFO] ")[-1].strip())
    print(f"recovery of {users:,} users ({s.state_store} store, {what}): {took:.1f}s from process start (goal <= 30 s)")
    print(f"worker resident memory after recovery: {rss / 2**20:,.0f} MiB ({rss / users:,.0f} B/user in memory)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=2000, help="synthetic users whose state is measured")
    ap.add_argument("--days", type=float, default=28.0)
    ap.add_argument("--recover", type=int, default=1_000_000, help="users' state to recover (0 to skip)")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument(
        "--store", choices=["memory", "rocksdb"], default="memory", help="rocksdb: also time a restart from the copy"
    )
    args = ap.parse_args()
    states = measured_states(args.users, args.days)
    sizes = sorted(len(codec.dumps(uid)) + len(v) for uid, v in states.items())
    print(
        f"state per user ({len(sizes):,} users, {args.days:g} days): mean {statistics.fmean(sizes):,.0f} B, "
        f"p50 {sizes[len(sizes) // 2]:,} B, p99 {sizes[int(len(sizes) * 0.99)]:,} B "
        "(key + changelog value; goal <= 300 B)"
    )
    if args.recover:
        recovery(list(states.values()), args.recover, args.partitions, args.store)


if __name__ == "__main__":
    main()
