"""The users a segmenter touched lately, kept decoded over a store that holds every state encoded.

The worker's user table holds each state in its wire form (:class:`worker.features.wire.EncodedStates`): a tenth of
the memory, but every batch decoded each user it touched (~10 % of the worker's CPU in a profile of the throughput
bench). An active user comes back batch after batch; this keeps the newest ``size`` of them decoded.

Kept objects are the segmenter's own, mutated by its batches: one stays equal to the stored state only because the
caller writes every state a batch returns as dirty (and deletes the erased) before the next batch, or stops the
process (the pipeline crashes the worker on a failed batch). The store changes behind the segmenter's back only
when partitions are (re)assigned and read from the changelog; the segmenter forgets everything then
(:meth:`clear`, from ``Segmenter.rebuild``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from itertools import islice

from worker.features.state import UserState


class KeptStates:
    def __init__(self, store: MutableMapping[str, UserState], size: int) -> None:
        self.store = store
        self.size = size  # users kept decoded at most (0: none)
        self._kept: dict[str, UserState] = {}  # oldest first

    def get(self, user_id: str) -> UserState | None:
        """The state as the segmenter left it, or as stored (decoded, and kept)."""
        state = self._kept.get(user_id)
        if state is None:
            state = self.store.get(user_id)
            if state is not None and self.size:
                self._kept[user_id] = state
                self._trim()
        return state

    def wrote(self, dirty: Mapping[str, UserState], erased: Iterable[str]) -> None:
        """A batch's states, about to be written (``erased``: deleted); the newest kept last."""
        if not self.size:
            return
        kept = self._kept
        for user_id, state in dirty.items():
            kept.pop(user_id, None)
            kept[user_id] = state
        for user_id in erased:
            kept.pop(user_id, None)
        self._trim()

    def clear(self) -> None:
        self._kept.clear()

    def __len__(self) -> int:
        return len(self._kept)

    def _trim(self) -> None:
        excess = len(self._kept) - self.size
        if excess > 0:
            for user_id in list(islice(self._kept, excess)):
                del self._kept[user_id]
