"""Human-readable persona names from centroid profiles, overridable from a TOML or JSON file."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from worker import codec
from worker.errors import ConfigError

_THRESHOLD = 0.5  # |z| a feature needs to be named
_MIN_SPREAD = 0.05  # population standard deviation (feature units) a feature needs to be named

_FIXED_PHRASES = {
    "rate_other": ("varied activity", "focused activity"),
    "spend": ("big spenders", "low spend"),
    "value_per_event": ("high-value actions", "low-value actions"),
    "days_since_last_event": ("lapsing", "recently active"),
    "sessions": ("many sessions", "few sessions"),
    "daypart_night": ("night owls", None),
    "daypart_morning": ("morning users", None),
    "daypart_afternoon": ("afternoon users", None),
    "daypart_evening": ("evening users", None),
    "weekend_share": ("weekend-heavy", "weekday users"),
}


def _phrase(feature: str, positive: bool) -> str | None:
    if feature.startswith("rate_") and ":" in feature:
        etype = feature.split(":", 1)[1]
        return f"frequent {etype}" if positive else f"low {etype}"
    up, down = _FIXED_PHRASES.get(feature, (None, None))
    return up if positive else down


def describe(centroid: np.ndarray, names: Sequence[str], spread: np.ndarray | None = None) -> str:
    """E.g. ``"frequent purchase, big spenders, low view"`` from a centroid in standardised units.

    ``spread`` (the population's standard deviation per feature, in feature units) keeps a feature that barely
    varies from naming a persona: a z-score of 3 on a share that moves by 0.01 says nothing a person would notice.
    """
    # several half-lives of one type describe one behaviour: keep the strongest per phrase
    best: dict[str, float] = {}
    for i, (z, feature) in enumerate(zip(centroid, names, strict=True)):
        if abs(z) < _THRESHOLD or (spread is not None and spread[i] < _MIN_SPREAD):
            continue
        phrase = _phrase(feature, z > 0)
        if phrase and abs(z) > abs(best.get(phrase, 0.0)):
            best[phrase] = float(z)
    ups = sorted((p for p, z in best.items() if z > 0), key=lambda p: -best[p])[:2]
    downs = sorted((p for p, z in best.items() if z < 0), key=lambda p: best[p])[:1]
    return ", ".join(ups + downs) or "average activity"


def name_personas(
    centroids: np.ndarray,
    feature_names: Sequence[str],
    ids: Sequence[str],
    overrides: Mapping[str, str],
    spread: np.ndarray | None = None,
) -> list[str]:
    names = [overrides.get(pid) or describe(c, feature_names, spread) for c, pid in zip(centroids, ids, strict=True)]
    seen: dict[str, int] = {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
    return [f"{n} ({pid})" if seen[n] > 1 and pid not in overrides else n for n, pid in zip(names, ids, strict=True)]


def load_name_overrides(path: str) -> dict[str, str]:
    """``{persona_id: name}`` from a TOML (``p1 = "creators"``) or JSON object file; empty path → none."""
    if not path:
        return {}
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text()) if file.suffix == ".toml" else codec.loads(file.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"persona names file {path}: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ConfigError(f"persona names file {path}: expected a table of persona id = name")
    return {str(k): v for k, v in data.items()}
