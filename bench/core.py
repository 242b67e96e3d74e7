"""Throughput of the pure core (Segmenter + Trainer) without Kafka: where the per-event Python time goes.

python bench/core.py [--users 2000] [--days 28] [--profile]

Prints the segmenter's events/s and a digest of the change ids in the order they were emitted: a change to the
core that should not change its behaviour keeps the count and the digest.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import pstats
import time

from worker import codec
from worker.changes import InputRecord, Segmenter
from worker.clustering import Trainer
from worker.features.state import UserState
from worker.runtime.records import sample_chunks, samples_in
from worker.settings import Settings
from worker.synth import generate


def run(users: int, days: float, batch: int) -> None:
    s = Settings()
    pop = generate(users, days, seed=1)
    raw = [codec.dumps(e) for e in pop.events]
    store: dict[str, UserState] = {}
    seg = Segmenter(s, store, lambda _u: 0)
    trainer = Trainer(s)
    t_seg = t_train = 0.0
    changes = 0
    ids = hashlib.sha256()
    for i in range(0, len(raw), batch):
        recs = [InputRecord(v, None, 0, i + j, 0, i + j, 0.0) for j, v in enumerate(raw[i : i + batch])]
        t0 = time.perf_counter()
        res = seg.process(recs, 2**62, 0.0)
        store.update(res.dirty)
        t1 = time.perf_counter()
        snap = trainer.add([sample for chunk in sample_chunks(res.samples) for sample in samples_in(chunk)])
        t_train += time.perf_counter() - t1
        t_seg += t1 - t0
        changes += len(res.changes)
        for _, change, _ in res.changes:
            ids.update(codec.loads(change)["event_id"].encode())
        if snap:
            seg.set_model(snap)
    print(
        f"{len(raw):,} events: segmenter {len(raw) / t_seg:,.0f} events/s ({t_seg:.2f}s), "
        f"trainer {t_train:.2f}s, {changes:,} changes (ids {ids.hexdigest()[:16]}), "
        f"model v{seg.model.version if seg.model else 0}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--days", type=float, default=28.0)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    if a.profile:
        prof = cProfile.Profile()
        prof.runcall(run, a.users, a.days, a.batch)
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)
    else:
        run(a.users, a.days, a.batch)


if __name__ == "__main__":
    main()
