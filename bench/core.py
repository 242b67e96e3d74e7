"""Throughput of the pure core (Segmenter + Trainer) without Kafka: where the per-event Python time goes.

python bench/core.py [--users 2000] [--days 28] [--repeat 5] [--profile] [--interpreted]

Prints the segmenter's events/s and a digest of the change ids in the order they were emitted: a change to the
core that should not change its behaviour keeps the count and the digest. With ``--repeat N`` the segmenter runs
the same batches N times, adopting the first pass's models after the same batches, and each batch counts with its
best time: on a shared machine, the figure of the code rather than of its neighbours.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import pstats
import time
from typing import TYPE_CHECKING

from worker import corebuild

if TYPE_CHECKING:
    from worker.clustering.snapshot import ModelSnapshot
    from worker.features.state import UserState


def run(users: int, days: float, batch: int, repeat: int) -> None:
    # imported here: after main() chose the core's build
    from worker import codec
    from worker.changes import InputRecord, Segmenter
    from worker.clustering.trainer import Trainer
    from worker.runtime.fitting import limit_blas
    from worker.runtime.records import sample_chunks, samples_in
    from worker.settings import Settings
    from worker.synth import generate

    s = Settings()
    limit_blas(s.blas_threads)  # as the worker runs (an idle BLAS thread spinning beside it was 15 % of a profile)
    pop = generate(users, days, seed=1)
    raw = [codec.dumps(e) for e in pop.events]
    batches = [
        [InputRecord(v, None, 0, i + j, 0, i + j, 0.0) for j, v in enumerate(raw[i : i + batch])]
        for i in range(0, len(raw), batch)
    ]
    trainer = Trainer(s)
    models: dict[int, ModelSnapshot] = {}  # batch index -> the model adopted after it
    t_train = 0.0
    best = [float("inf")] * len(batches)
    for rep in range(repeat):
        store: dict[str, UserState] = {}
        seg = Segmenter(s, store, lambda _u: 0)
        changes = 0
        ids = hashlib.sha256()
        for k, recs in enumerate(batches):
            t0 = time.perf_counter()
            res = seg.process(recs, 2**62, 0.0)
            store.update(res.dirty)
            best[k] = min(best[k], time.perf_counter() - t0)
            changes += len(res.changes)
            for _, change, _ in res.changes:
                ids.update(codec.loads(change)["event_id"].encode())
            if rep == 0:  # the trainer's models, fitted once; the next passes adopt them after the same batches
                t1 = time.perf_counter()
                snap = trainer.add([sample for chunk in sample_chunks(res.samples) for sample in samples_in(chunk)])
                t_train += time.perf_counter() - t1
                if snap:
                    models[k] = snap
            if k in models:
                seg.set_model(models[k])
        if rep == 0:
            digest = (changes, ids.hexdigest()[:16], seg.model.version if seg.model else 0)
        elif (changes, ids.hexdigest()[:16], seg.model.version if seg.model else 0) != digest:
            raise SystemExit(f"pass {rep + 1} differs from the first: {changes} changes, {ids.hexdigest()[:16]}")
    t_seg = sum(best)
    print(
        f"{len(raw):,} events: segmenter {len(raw) / t_seg:,.0f} events/s ({t_seg:.2f}s, "
        f"{t_seg / len(raw) * 1e6:.1f} us/event; best of {repeat} per batch), trainer {t_train:.2f}s, "
        f"{digest[0]:,} changes (ids {digest[1]}), model v{digest[2]}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--days", type=float, default=28.0)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=1, help="segmenter passes (best time per batch counts)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--interpreted", action="store_true", help="the core interpreted even where it is compiled")
    a = ap.parse_args()
    build = corebuild.activate(force_source=a.interpreted)
    print(f"core: {build.label}" + (f" ({build.reason})" if build.reason else ""))
    if a.profile:
        prof = cProfile.Profile()
        prof.runcall(run, a.users, a.days, a.batch, a.repeat)
        pstats.Stats(prof).sort_stats("tottime").print_stats(20)
    else:
        run(a.users, a.days, a.batch, a.repeat)


if __name__ == "__main__":
    main()
