"""Personas over time: what a model update did to the personas themselves.

Users are told when they move; this says when the personas move. Each model version after the first is compared
with the one before on the trainer's recent window of samples, which both models place (the flows: how many of the
window's users the old model puts in one persona and the new model in another):

- ``split``: new ids whose members came mostly (``MAIN_SHARE``) from one persona that keeps its id, and were its
  members before (their profiles began before that persona did): from that persona, to it and its offshoots.
- ``emerged``: any other new id: a behaviour the window's users did not show before, or that newcomers brought.
- ``merged``: ids that retire with most of their members (``MAIN_SHARE``) going to one persona that stays: from
  them and it, to it.
- ``retired``: any other id that retires; its flows say where its members went.
- ``drifted``: a persona that keeps its id while its centroid moved farther than ``drift_distance`` (scaled units)
  from where it was last announced (when it got its id, split off or last drifted).
- ``renamed``: a persona that keeps its id under another name (the operator's names file changed).

The first model has no events: its personas are where every lineage starts (``ModelSnapshot.lineage``).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.clustering.snapshot import Lineage, ModelSnapshot
from worker.events.timefmt import format_rfc3339
from worker.personas.reasons import model_reasons
from worker.personas.registry import PERSONA_EVENTS

SCHEMA = "persona-change.v1"
KINDS = PERSONA_EVENTS
MAIN_SHARE = 0.6  # the share of a persona's members that makes one other persona their source or their destination
NEWCOMERS = 0.5  # a new id more than half of whose members began after their source persona emerged, not split


@dataclass(frozen=True)
class Window:
    """The trainer's recent samples: their rows in the models' scaled units and when each one's profile began."""

    rows: np.ndarray
    origins: np.ndarray


def persona_changes(
    old: ModelSnapshot, new: ModelSnapshot, window: Window, drift_distance: float
) -> tuple[tuple[dict[str, Any], ...], dict[str, Lineage]]:
    """The persona-change events of ``new`` against ``old`` and ``new``'s lineage (both share one feature space:
    the trainer's updates keep the first fit's scaling)."""
    return _Comparison(old, new, window, drift_distance).run()


def first_lineage(model: ModelSnapshot) -> dict[str, Lineage]:
    """The lineage of a first model: every persona starts here."""
    return {pid: _line(model, i) for i, pid in enumerate(model.persona_ids)}


def _line(model: ModelSnapshot, index: int) -> Lineage:
    return Lineage(model.version, model.as_of_ms, tuple(float(x) for x in model.centroids[index]))


class _Comparison:
    """One model update: the flows of the window's users between the old personas and the new ones."""

    def __init__(self, old: ModelSnapshot, new: ModelSnapshot, window: Window, drift_distance: float) -> None:
        self.old, self.new, self.drift = old, new, drift_distance
        self.origins = window.origins
        k_old, k_new = len(old.persona_ids), len(new.persona_ids)
        if len(window.rows):
            self.before, self.after = old.assign_scaled(window.rows), new.assign_scaled(window.rows)
        else:
            self.before = self.after = np.zeros(0, dtype=np.int64)
        self.flows = np.zeros((k_old, k_new), dtype=np.int64)
        np.add.at(self.flows, (self.before, self.after), 1)
        self.old_index = {pid: i for i, pid in enumerate(old.persona_ids)}
        self.new_index = {pid: j for j, pid in enumerate(new.persona_ids)}
        self.lineage = {pid: old.lineage.get(pid) or _line(old, i) for pid, i in self.old_index.items()}
        self.events: list[dict[str, Any]] = []

    def run(self) -> tuple[tuple[dict[str, Any], ...], dict[str, Lineage]]:
        stays = [pid for pid in self.new.persona_ids if pid in self.old_index]
        fresh = [pid for pid in self.new.persona_ids if pid not in self.old_index]
        gone = [pid for pid in self.old.persona_ids if pid not in self.new_index]
        announced: set[str] = set()
        announced |= self._splits_and_emergences(fresh)
        announced |= self._merges_and_retirements(gone)
        announced |= {pid for pid in stays if pid not in announced and self._drifted_or_renamed(pid)}
        lineage = {}
        for j, pid in enumerate(self.new.persona_ids):
            line = self.lineage.get(pid)
            if line is None:  # a new id: its lineage starts here
                lineage[pid] = _line(self.new, j)
            elif pid in announced:  # the same id, announced where it is now
                lineage[pid] = dataclasses.replace(line, anchor=_line(self.new, j).anchor)
            else:
                lineage[pid] = line
        return tuple(self.events), lineage

    # --- new ids -------------------------------------------------------------------------------------
    def _splits_and_emergences(self, fresh: list[str]) -> set[str]:
        """Announced ids (the offshoots, and the personas they split from: their centroids moved too)."""
        splits: dict[str, list[str]] = {}
        for pid in fresh:
            source = self._split_source(self.new_index[pid])
            if source is None:
                self._emit("emerged", [], [pid], self._column(self.new_index[pid]))
            else:
                splits.setdefault(source, []).append(pid)
        for source, offshoots in splits.items():
            self._emit("split", [source], [source, *offshoots], self._row(self.old_index[source]))
        return set(splits) | set(fresh)

    def _split_source(self, j: int) -> str | None:
        """The persona that stays and that new persona ``j`` split from, if one did."""
        column = self.flows[:, j]
        members = int(column.sum())
        if not members:
            return None
        i = int(np.argmax(column))
        source = self.old.persona_ids[i]
        if source not in self.new_index or column[i] < MAIN_SHARE * members:
            return None
        since = self.lineage[source].since_ms
        mine = self.origins[(self.after == j) & (self.before == i)]
        newcomers = float(np.mean(mine > since)) if since and len(mine) else 0.0
        return None if newcomers > NEWCOMERS else source

    # --- retired ids ---------------------------------------------------------------------------------
    def _merges_and_retirements(self, gone: list[str]) -> set[str]:
        """Announced ids (the personas merged into)."""
        merges: dict[str, list[str]] = {}
        for pid in gone:
            i = self.old_index[pid]
            row = self.flows[i]
            j = int(np.argmax(row)) if len(row) else 0
            target = self.new.persona_ids[j] if len(row) else None
            if target in self.old_index and row.sum() and row[j] >= MAIN_SHARE * row.sum():
                merges.setdefault(str(target), []).append(pid)
            else:
                self._emit("retired", [pid], [], self._row(i))
        for target, merged in merges.items():
            flows = [f for pid in [*merged, target] for f in self._row(self.old_index[pid])]
            self._emit("merged", [*merged, target], [target], flows)
        return set(merges)

    # --- ids that stay -------------------------------------------------------------------------------
    def _drifted_or_renamed(self, pid: str) -> bool:
        """True when the persona drifted: announced where it is now."""
        j = self.new_index[pid]
        anchor = np.asarray(self.lineage[pid].anchor)
        distance = float(np.linalg.norm(self.new.centroids[j] - anchor)) if len(anchor) else 0.0
        if distance > self.drift:
            self._emit("drifted", [pid], [pid], [], distance)
            return True
        if self.old.name_of(pid) != self.new.name_of(pid):
            self._emit("renamed", [pid], [pid], [])
        return False

    # --- the events ----------------------------------------------------------------------------------
    def _row(self, i: int) -> list[tuple[str, str, int]]:
        return [(self.old.persona_ids[i], self.new.persona_ids[j], int(n)) for j, n in enumerate(self.flows[i]) if n]

    def _column(self, j: int) -> list[tuple[str, str, int]]:
        return [(self.old.persona_ids[i], self.new.persona_ids[j], int(n)) for i, n in enumerate(self.flows[:, j]) if n]

    def _emit(
        self,
        kind: str,
        before: list[str],
        after: list[str],
        flows: Iterable[tuple[str, str, int]],
        distance: float | None = None,
    ) -> None:
        old, new = self.old, self.new
        self.events.append(
            {
                "schema": SCHEMA,
                "event_id": _event_id(new.version, kind, *before, "/", *after),
                "kind": kind,
                "model_version_before": old.version,
                "model_version": new.version,
                "at": format_rfc3339(new.as_of_ms),
                "from": [_persona(old, self.old_index[pid], self.before) for pid in before],
                "to": [_persona(new, self.new_index[pid], self.after) for pid in after],
                "flows": [{"from": a, "to": b, "users": n} for a, b, n in flows],
                "distance": None if distance is None else round(distance, 4),
            }
        )


def event_key(event: dict[str, Any]) -> str:
    """The record key of an event: the persona it is about (the one it leads to; a retired one's own id)."""
    personas = event["to"] or event["from"]
    return str(personas[0]["id"])


def _persona(model: ModelSnapshot, index: int, labels: np.ndarray) -> dict[str, Any]:
    """A persona as an event names it: id, name, users of the window it holds, the features that set it apart."""
    return {
        "id": model.persona_ids[index],
        "name": model.persona_names[index],
        "users": int(np.count_nonzero(labels == index)),
        "reasons": model_reasons(model, model.centroids[index], None, index),
    }


def _event_id(version: int, *parts: str) -> str:
    """One model version, one kind, the same personas → the same id (the trainer may publish a version twice)."""
    key = "\x1f".join((str(version), *parts)).encode()
    return hashlib.blake2b(key, digest_size=16).hexdigest()
