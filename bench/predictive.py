"""Do segments predict who buys again? CDNOW's first 39 weeks through the pure pipeline with default settings (or
SEGMENT_WORKER_* settings), each customer scored by their segment's share of repeat buyers in the next 39 weeks,
against BG/NBD fitted on the same weeks and recency alone (worker.evaluation.predictive; issue 17).

    python bench/predictive.py            # the 1/10 sample (2,357 customers, about a second)
    python bench/predictive.py --master   # the whole log (23,570 customers, about ten seconds)
"""

from __future__ import annotations

import argparse
import os

from worker.evaluation.predictive import compare, load_cdnow
from worker.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--master", action="store_true", help="the whole log instead of the 1/10 sample")
    parser.add_argument("--weeks", type=float, default=39.0, help="calibration weeks, and the horizon after them")
    args = parser.parse_args()
    name = "CDNOW_master.txt" if args.master else "CDNOW_sample.txt"
    r = compare(Settings.load(os.environ), load_cdnow(name), args.weeks)
    again = 100 * r["bought_again"]
    print(f"{name}: {r['customers']:,} customers, {again:.1f} % buy again in the next {args.weeks:g} weeks")
    print(f"  AUC  segments {r['segments_auc']:.4f}   BG/NBD {r['bgnbd_auc']:.4f}   recency {r['recency_auc']:.4f}")
    print(f"  segments / BG/NBD = {r['ratio']:.3f} (issue 17's target: 0.97)")
    print("  segments at the cutoff: " + ", ".join(f"{k} {v:,}" for k, v in r["segments"].items()))


if __name__ == "__main__":
    main()
