"""Why did a user move? The features that pulled the user towards the new persona, strongest first."""

from __future__ import annotations

from typing import Any

import numpy as np

from worker.clustering.snapshot import ModelSnapshot

TOP_REASONS = 3


def model_reasons(
    model: ModelSnapshot, scaled: np.ndarray, from_index: int | None, to_index: int
) -> list[dict[str, Any]]:
    """Per feature, how much closer the user's (scaled) vector is to the new centroid than to the old one (or to
    the population mean on a first assignment or a return from dormancy)."""
    to_c = model.centroids[to_index]
    from_c = model.centroids[from_index] if from_index is not None else np.zeros_like(to_c)
    weight = (scaled - from_c) ** 2 - (scaled - to_c) ** 2
    order = np.argsort(-weight)[:TOP_REASONS]
    raw = model.unscale(scaled)
    to_raw = model.unscale(to_c)
    from_raw = model.unscale(from_c) if from_index is not None else None
    out = []
    for i in order:
        if weight[i] <= 0:
            break
        out.append(
            {
                "feature": model.space.names[i],
                "value": round(float(raw[i]), 4),
                "direction": "up" if to_c[i] > from_c[i] else "down",
                "from_centroid": round(float(from_raw[i]), 4) if from_raw is not None else None,
                "to_centroid": round(float(to_raw[i]), 4),
                "weight": round(float(weight[i]), 4),
            }
        )
    return out


def silence_reason(days_silent: float) -> list[dict[str, Any]]:
    return [{"feature": "days_since_last_event", "value": round(days_silent, 4), "direction": "up"}]
