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


def _named(values: np.ndarray, names: Sequence[str], spread: np.ndarray | None) -> dict[str, float]:
    """The phrase of each feature ``values`` name (a standardised centroid, or the difference of two), with its
    value; several half-lives of one type describe one behaviour: the strongest per phrase."""
    best: dict[str, float] = {}
    for i, (z, feature) in enumerate(zip(values, names, strict=True)):
        if abs(z) < _THRESHOLD or (spread is not None and spread[i] < _MIN_SPREAD):
            continue
        phrase = _phrase(feature, z > 0)
        if phrase and abs(z) > abs(best.get(phrase, 0.0)):
            best[phrase] = float(z)
    return best


def describe(centroid: np.ndarray, names: Sequence[str], spread: np.ndarray | None = None) -> str:
    """E.g. ``"frequent purchase, big spenders, low view"`` from a centroid in standardised units.

    ``spread`` (the population's standard deviation per feature, in feature units) keeps a feature that barely
    varies from naming a persona: a z-score of 3 on a share that moves by 0.01 says nothing a person would notice.
    """
    best = _named(centroid, names, spread)
    ups = sorted((p for p, z in best.items() if z > 0), key=lambda p: -best[p])[:2]
    downs = sorted((p for p, z in best.items() if z < 0), key=lambda p: best[p])[:1]
    return ", ".join(ups + downs) or "average activity"


def _words(name: str) -> frozenset[str]:
    """A name's phrases, in any order: "frequent like, frequent share" and "frequent share, frequent like" are
    one name to a reader."""
    return frozenset(p.strip() for p in name.split(","))


def name_personas(
    centroids: np.ndarray,
    feature_names: Sequence[str],
    ids: Sequence[str],
    overrides: Mapping[str, str],
    spread: np.ndarray | None = None,
    kept: Mapping[str, str] | None = None,
) -> list[str]:
    """A name for each persona: the operator's, else the one it was ``kept`` under (a persona keeps its name for as
    long as it keeps its id), else one from its profile. No two personas share a name, in any word order: a new
    name that repeats another one's phrases gets the phrase that most sets it apart from that persona (its
    strongest difference to it), and only when that does not tell them apart either, its id."""
    kept = kept or {}
    fixed = {pid: overrides.get(pid) or kept.get(pid) for pid in ids}
    names: list[str] = []
    for i, pid in enumerate(ids):
        name = fixed[pid] or describe(centroids[i], feature_names, spread)
        taken = {_words(n): j for j, n in enumerate(names)}
        taken.update({_words(n): ids.index(q) for q, n in fixed.items() if n and q != pid})
        other = taken.get(_words(name))
        if other is not None and not fixed[pid]:
            name = _apart(name, centroids[i] - centroids[other], feature_names, spread, taken) or f"{name} ({pid})"
        names.append(name)
    return names


def _apart(
    name: str,
    difference: np.ndarray,
    features: Sequence[str],
    spread: np.ndarray | None,
    taken: Mapping[frozenset[str], int],
) -> str | None:
    """``name`` with the strongest phrase of ``difference`` it lacks, when that makes a name nobody has."""
    contrast = _named(difference, features, spread)
    for phrase in sorted(contrast, key=lambda p: -abs(contrast[p])):
        if phrase in _words(name):
            continue
        longer = f"{name}, {phrase}"
        if _words(longer) not in taken:
            return longer
    return None


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
