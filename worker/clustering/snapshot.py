"""A versioned, immutable model snapshot: what every worker of a group assigns with.

The trainer publishes snapshots; workers only read them. Assignment is vectorised over a whole batch of users.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from worker import codec
from worker.clustering.batch import sq_distances
from worker.errors import ModelError
from worker.features.space import LEGACY_FIXED_FEATURES, FeatureSpace


@dataclass(frozen=True)
class Assignment:
    index: np.ndarray  # nearest centroid per row
    margin: np.ndarray  # (d2 - d1) / (d2 + d1) in [0, 1]; 1 = on the centroid, 0 = equidistant
    scaled: np.ndarray  # the scaled rows, for reasons


DISPLACED_VERSIONS = 64  # how many versions a displacement is kept for (a worker that far behind places users anyway)


@dataclass(frozen=True)
class Displacement:
    """A model version's event that re-places a persona's members: where they may go (``to``; empty: anywhere,
    the persona is gone)."""

    version: int
    event_id: str | None
    to: tuple[str, ...] = ()

    def to_json(self) -> list[Any]:
        return [self.version, self.event_id, list(self.to)]

    @classmethod
    def from_json(cls, raw: list[Any]) -> Displacement:
        return cls(int(raw[0]), None if raw[1] is None else str(raw[1]), tuple(raw[2]) if len(raw) > 2 else ())


def displacements(
    before: dict[str, Displacement], version: int, changes: tuple[dict[str, Any], ...]
) -> dict[str, Displacement]:
    """``before`` with the displacements of ``changes`` (a version's lifecycle events) and without those older than
    ``DISPLACED_VERSIONS``: a split's source (its members may go to the offshoots), the personas an emerged one drew
    from (to it), the ids merged away or retired (anywhere)."""
    out = {pid: d for pid, d in before.items() if d.version > version - DISPLACED_VERSIONS}

    def add(pid: str, event: dict[str, Any], to: tuple[str, ...]) -> None:
        known = out.get(pid)
        if known is not None and known.version == version:  # a second event of this version: both ways open
            to = () if not to or not known.to else tuple(sorted({*known.to, *to}))
            event = {"event_id": known.event_id}
        out[pid] = Displacement(version, event["event_id"], to)

    for event in changes:
        kind, sources = event["kind"], [p["id"] for p in event["from"]]
        targets = tuple(p["id"] for p in event["to"])
        if kind == "split":
            add(sources[0], event, tuple(t for t in targets if t != sources[0]))
        elif kind == "emerged":
            for source in sorted({f["from"] for f in event["flows"]}):
                add(source, event, targets)
        elif kind in ("merged", "retired"):
            for source in sources:
                if source not in targets:
                    add(source, event, ())
    return out


def ancestries(
    before: dict[str, tuple[str, ...]], changes: tuple[dict[str, Any], ...], live: tuple[str, ...]
) -> dict[str, tuple[str, ...]]:
    """``before`` with what ``changes`` add: a split's offshoots descend from its source (and what it descends
    from), a merge's persona from the ids merged into it; only ``live`` ids kept."""
    out = {pid: set(ids) for pid, ids in before.items()}
    for event in changes:
        kind, sources, targets = event["kind"], [p["id"] for p in event["from"]], [p["id"] for p in event["to"]]
        if kind not in ("split", "merged"):
            continue
        for target in targets:
            for source in sources:
                if source != target:
                    out.setdefault(target, set()).update({source, *out.get(source, ())})
    return {pid: tuple(sorted(out[pid])) for pid in live if out.get(pid)}


@dataclass(frozen=True)
class Lineage:
    """Where a persona's id comes from: the model version and event time it got it, and the centroid (scaled
    units) it was last announced with."""

    since_version: int
    since_ms: int
    anchor: tuple[float, ...]

    def to_json(self) -> list[Any]:
        return [self.since_version, self.since_ms, list(self.anchor)]

    @classmethod
    def from_json(cls, raw: list[Any]) -> Lineage:
        return cls(int(raw[0]), int(raw[1]), tuple(float(x) for x in raw[2]))


@dataclass(frozen=True)
class ModelSnapshot:
    version: int
    space: FeatureSpace
    mean: np.ndarray
    scale: np.ndarray
    centroids: np.ndarray  # (k, dim), scaled space
    persona_ids: tuple[str, ...]
    persona_names: tuple[str, ...]
    samples_seen: int
    next_persona: int  # next free persona number
    k_scores: dict[int, float] = field(default_factory=dict)
    # next offset of the training-samples topic not folded into this model: a trainer that resumes from it skips
    # the records before (they are in the model) and reads the rest again (a crash before publishing loses none)
    samples_offset: int = 0
    # the stream's typical gap between a user's events (median over sampled users; 0: not measured), which sets
    # how long a user with little history of its own may be silent before it is dormant (worker.changes.dormancy)
    typical_gap_ms: float = 0.0
    # event time of the newest sample folded into this model (0: not known, a snapshot written before it was kept)
    as_of_ms: int = 0
    # per persona id: [version, event time] it got its id at, and its centroid then or at its last `drifted` event
    # (worker.personas.lifecycle): how far it has moved since it was last announced
    lineage: dict[str, Lineage] = field(default_factory=dict)
    # what this version did to the personas themselves (persona-change.v1 events; published once, by the trainer)
    changes: tuple[dict[str, Any], ...] = ()
    # per persona id: the newest event, in this version or one of the DISPLACED_VERSIONS before, that displaced its
    # members (a split's source, a persona an emerged one drew from, an id merged away or retired): a worker adopting
    # this version places again the members it last placed under an older version, whichever versions it skipped
    displaced: dict[str, Displacement] = field(default_factory=dict)
    # per persona id: the ids it descends from (split off from, or merged in), for rules by lineage (`{lineage: p3}`)
    ancestry: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        k, dim = self.centroids.shape
        if dim != self.space.dim or len(self.persona_ids) != k or len(self.persona_names) != k:
            raise ModelError(f"inconsistent snapshot v{self.version}: {k} centroids of dim {dim}")

    def assign(self, x: np.ndarray) -> Assignment:
        xs = (x - self.mean) / self.scale
        d = np.sqrt(sq_distances(xs, self.centroids))
        if d.shape[1] == 1:
            return Assignment(np.zeros(len(x), dtype=np.int64), np.ones(len(x)), xs)
        order = np.argpartition(d, 1, axis=1)[:, :2]
        rows = np.arange(len(x))
        d1 = d[rows, order[:, 0]]
        d2 = d[rows, order[:, 1]]
        swap = d2 < d1
        first = np.where(swap, order[:, 1], order[:, 0])
        lo, hi = np.minimum(d1, d2), np.maximum(d1, d2)
        margin = (hi - lo) / np.maximum(hi + lo, 1e-12)
        return Assignment(first, margin, xs)

    def assign_scaled(self, xs: np.ndarray) -> np.ndarray:
        """Nearest centroid of rows already in the model's scaled units."""
        out: np.ndarray = sq_distances(xs, self.centroids).argmin(1)
        return out

    def unscale(self, row: np.ndarray) -> np.ndarray:
        out: np.ndarray = row * self.scale + self.mean
        return out

    def drift_from(self, older: ModelSnapshot) -> float | None:
        """How far the personas moved since ``older``: the mean distance, in this snapshot's scaled units, between
        each persona's centroid here and there (personas in both). None when there is nothing to compare (no
        persona in common, or another feature space: the vocabulary changed)."""
        if older.space.names != self.space.names:
            return None
        index = {pid: i for i, pid in enumerate(older.persona_ids)}
        pairs = [(i, index[pid]) for i, pid in enumerate(self.persona_ids) if pid in index]
        if not pairs:
            return None
        new = self.centroids[[i for i, _ in pairs]]
        old = (older.unscale(older.centroids[[j for _, j in pairs]]) - self.mean) / self.scale
        return float(np.linalg.norm(new - old, axis=1).mean())

    def name_of(self, persona_id: str | None) -> str | None:
        if persona_id is None:
            return None
        try:
            return self.persona_names[self.persona_ids.index(persona_id)]
        except ValueError:
            return persona_id

    def profile(self, index: int) -> dict[str, float]:
        """Centroid of persona ``index`` in feature units (unscaled)."""
        raw = self.unscale(self.centroids[index])
        return {n: round(float(v), 4) for n, v in zip(self.space.names, raw, strict=True)}

    # --- wire ----------------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        return codec.dumps(
            {
                "version": self.version,
                "vocabulary": list(self.space.vocabulary),
                "half_lives_ms": list(self.space.half_lives_ms),
                "fixed_features": list(self.space.fixed),
                "mean": self.mean,
                "scale": self.scale,
                "centroids": self.centroids,
                "persona_ids": list(self.persona_ids),
                "persona_names": list(self.persona_names),
                "samples_seen": self.samples_seen,
                "next_persona": self.next_persona,
                "k_scores": {str(k): v for k, v in self.k_scores.items()},
                "samples_offset": self.samples_offset,
                "typical_gap_ms": self.typical_gap_ms,
                "as_of_ms": self.as_of_ms,
                "lineage": {pid: line.to_json() for pid, line in self.lineage.items()},
                "changes": list(self.changes),
                "displaced": {pid: d.to_json() for pid, d in self.displaced.items()},
                "ancestry": {pid: list(ids) for pid, ids in self.ancestry.items()},
            }
        )

    @staticmethod
    def version_of(data: bytes) -> int | None:
        """The version a snapshot's bytes hold (None: not a snapshot)."""
        try:
            return int(codec.loads(data)["version"])
        except (KeyError, TypeError, ValueError):
            return None

    @classmethod
    def from_bytes(cls, data: bytes) -> ModelSnapshot:
        try:
            d: dict[str, Any] = codec.loads(data)
            space = FeatureSpace(
                tuple(d["vocabulary"]),
                tuple(float(h) for h in d["half_lives_ms"]),
                tuple(d.get("fixed_features", LEGACY_FIXED_FEATURES)),
            )
            return cls(
                version=int(d["version"]),
                space=space,
                mean=np.asarray(d["mean"], dtype=np.float64),
                scale=np.asarray(d["scale"], dtype=np.float64),
                centroids=np.asarray(d["centroids"], dtype=np.float64).reshape(-1, space.dim),
                persona_ids=tuple(d["persona_ids"]),
                persona_names=tuple(d["persona_names"]),
                samples_seen=int(d["samples_seen"]),
                next_persona=int(d["next_persona"]),
                k_scores={int(k): float(v) for k, v in d.get("k_scores", {}).items()},
                samples_offset=int(d.get("samples_offset", 0)),
                typical_gap_ms=float(d.get("typical_gap_ms", 0.0)),
                as_of_ms=int(d.get("as_of_ms", 0)),
                lineage={str(pid): Lineage.from_json(raw) for pid, raw in d.get("lineage", {}).items()},
                changes=tuple(d.get("changes", ())),
                displaced={str(pid): Displacement.from_json(raw) for pid, raw in d.get("displaced", {}).items()},
                ancestry={str(pid): tuple(ids) for pid, ids in d.get("ancestry", {}).items()},
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ModelError(f"unreadable model snapshot: {exc}") from exc
