"""Do segments predict? A purchase log's segments, learned from its first part, against a dedicated model.

The measure (issue 17): learn the segments from the log up to a cutoff; score each customer by their segment's
share of customers who buy again after the cutoff; the area under the ROC curve of that score for "bought again
within the horizon" is compared with the AUC of the BG/NBD model's expected purchases (Fader, Hardie & Lee 2005,
``BetaGeoFitter`` of the ``lifetimes`` package) fitted on the same first part, and with simple baselines: recency
alone, one segment for all (0.5). The segments come from the pure pipeline (``run_core``) with the settings
given — the defaults, unless a sweep says otherwise.

CDNOW (69,659 purchases of 23,570 customers, 1997-01 to 1998-06; a 1/10 sample of 2,357 customers) ships with
``lifetimes``, a development dependency: this module is for the bench and the tests, not the worker.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from worker.evaluation.engines import encode, run_core
from worker.events.timefmt import format_rfc3339
from worker.settings import Settings

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
LIVE_BATCH = 50  # records per batch: a few hours of CDNOW's purchases


@dataclass(frozen=True, slots=True)
class Purchase:
    customer: str
    ts: int  # epoch ms
    value: float


def load_cdnow(name: str = "CDNOW_sample.txt") -> list[Purchase]:
    """CDNOW's log from the ``lifetimes`` wheel (``CDNOW_sample.txt`` or ``CDNOW_master.txt``), noon UTC of each
    purchase day, in time order."""
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the CDNOW log ships with lifetimes: pip install -e '.[dev]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / name
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[2].isdigit():  # the sample: index, customer, date, cds, value
            parts = parts[1:]
        if len(parts) != 4 or not parts[1].isdigit():
            continue
        customer, day, _cds, value = parts
        ts = int(datetime.strptime(day, "%Y%m%d").replace(hour=12, tzinfo=UTC).timestamp() * 1000)
        out.append(Purchase(f"cdnow-{customer}", ts, float(value)))
    out.sort(key=lambda p: (p.ts, p.customer))
    return out


def purchase_events(purchases: Sequence[Purchase]) -> list[dict[str, Any]]:
    """The purchases as events of the input contract."""
    return [
        {"user_id": p.customer, "event_type": "purchase", "timestamp": format_rfc3339(p.ts), "value": p.value}
        for p in purchases
    ]


@dataclass(frozen=True)
class Split:
    calibration: list[Purchase]  # before the cutoff
    customers: list[str]  # every customer of the calibration part, sorted
    bought_again: np.ndarray  # per customer: 1 when they bought within the horizon after the cutoff
    cutoff: int
    horizon_ms: int


def split(purchases: Sequence[Purchase], weeks: float = 39, horizon_weeks: float = 39) -> Split:
    """The first ``weeks`` of the log, and who among its customers buys again in the ``horizon_weeks`` after."""
    start = purchases[0].ts - 12 * 3_600_000  # the log's first day, midnight
    cutoff = start + int(weeks * WEEK_MS)
    end = cutoff + int(horizon_weeks * WEEK_MS)
    calibration = [p for p in purchases if p.ts < cutoff]
    later = {p.customer for p in purchases if cutoff <= p.ts < end}
    customers = sorted({p.customer for p in calibration})
    y = np.array([c in later for c in customers], dtype=np.int64)
    return Split(calibration, customers, y, cutoff, end - cutoff)


def segment_auc(segment_of: Mapping[str, str | None], data: Split) -> float:
    """AUC of scoring each customer by their segment's share of customers who bought again (one segment: 0.5)."""
    labels = [segment_of.get(c) or "none" for c in data.customers]
    buyers: dict[str, list[int]] = defaultdict(list)
    for label, y in zip(labels, data.bought_again.tolist(), strict=True):
        buyers[label].append(y)
    rate = {label: float(np.mean(ys)) for label, ys in buyers.items()}
    return _auc(data.bought_again, np.array([rate[label] for label in labels]))


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    return float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else 0.5


def bgnbd_auc(data: Split) -> float:
    """AUC of BG/NBD's expected purchases over the horizon, fitted on the calibration part (days as the unit)."""
    freq, recency, age = _summary(data)
    # lifetimes 0.11 (2020) sets a pandas option pandas 3 deprecated, on import: its warnings are not ours
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from lifetimes import BetaGeoFitter  # a development dependency, imported only here

        model = BetaGeoFitter(penalizer_coef=0.0).fit(freq, recency, age)
        horizon_days = data.horizon_ms / DAY_MS
        expected = model.conditional_expected_number_of_purchases_up_to_time(horizon_days, freq, recency, age)
    return _auc(data.bought_again, np.asarray(expected, dtype=np.float64))


def recency_auc(data: Split) -> float:
    """AUC of recency alone: the later a customer's last purchase before the cutoff, the likelier a next one."""
    _, recency, age = _summary(data)
    return _auc(data.bought_again, recency - age)


def _summary(data: Split) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per customer, in days: repeat purchase days (frequency), first to last purchase day (recency), first
    purchase day to the cutoff (age) — the RFM summary BG/NBD is fitted on."""
    days: dict[str, set[int]] = defaultdict(set)
    for p in data.calibration:
        days[p.customer].add(p.ts // DAY_MS)
    last_day = (data.cutoff - 1) // DAY_MS
    freq, recency, age = [], [], []
    for c in data.customers:
        d = days[c]
        freq.append(len(d) - 1)
        recency.append(max(d) - min(d))
        age.append(last_day - min(d))
    return np.array(freq, float), np.array(recency, float), np.array(age, float)


def final_segments(settings: Settings, data: Split) -> dict[str, str | None]:
    """Each customer's segment at the cutoff, from the pure pipeline run over the calibration part in batches of
    a live stream's size (a log of a few thousand purchases read in batches of a replay's 2,000 would move a
    partition's event time, and so its silence checks, by months at a time)."""
    outcome = run_core(settings, encode(purchase_events(data.calibration)), LIVE_BATCH)
    last: dict[str, tuple[int, str | None]] = {}
    for c in outcome.changes:
        seq = c["sequence"]
        if c["user_id"] not in last or last[c["user_id"]][0] < seq:
            last[c["user_id"]] = (seq, c["to_segment"])
    return {u: seg for u, (_, seg) in last.items()}


def compare(settings: Settings, purchases: Sequence[Purchase], weeks: float = 39) -> dict[str, Any]:
    """The segments' AUC beside BG/NBD's and recency's, and the segments' sizes at the cutoff."""
    data = split(purchases, weeks, weeks)
    segments = final_segments(settings, data)
    ours, bgnbd = segment_auc(segments, data), bgnbd_auc(data)
    sizes: dict[str, int] = defaultdict(int)
    for c in data.customers:
        sizes[segments.get(c) or "none"] += 1
    return {
        "customers": len(data.customers),
        "bought_again": float(data.bought_again.mean()),
        "segments_auc": ours,
        "bgnbd_auc": bgnbd,
        "recency_auc": recency_auc(data),
        "ratio": ours / bgnbd,
        "segments": dict(sorted(sizes.items(), key=lambda kv: -kv[1])),
    }
