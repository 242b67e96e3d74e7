"""The users a segmenter touched lately, kept decoded over a store that holds every state encoded, and the states
its batches changed that the store does not hold yet.

The worker's user table holds each state in its wire form (:class:`worker.features.wire.EncodedStates`): a tenth of
the memory, but every batch decoded each user it touched (~10 % of the worker's CPU in a profile of the throughput
bench). An active user comes back batch after batch; this keeps the newest ``size`` of them decoded.

Kept objects are the segmenter's own, mutated by its batches: one stays equal to the stored state only because the
caller writes every state a batch returns as dirty (and deletes the erased) before the next batch, or stops the
process (the pipeline crashes the worker on a failed batch). A caller that writes less often (the worker writes the
changelog once per interval, :mod:`worker.runtime.statewrites`) marks the states it has not written by
:meth:`defer` and takes them with :meth:`take_unwritten`: until then they are read from here, never from the store
(older there), whether still kept or not. The store changes behind the segmenter's back only when partitions are
(re)assigned and read from the changelog (after everything unwritten was taken); the segmenter forgets what it kept
then (:meth:`clear`, from ``Segmenter.rebuild``).
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
        self._deferred = False
        self._unwritten: dict[str, UserState | None] = {}  # newer than the store (None: erased), in batch order

    def get(self, user_id: str) -> UserState | None:
        """The state as the segmenter left it, or as stored (decoded, and kept)."""
        state = self._kept.get(user_id)
        if state is None:
            if user_id in self._unwritten:  # not kept any more, and not written yet
                return self._unwritten[user_id]
            state = self.store.get(user_id)
            if state is not None and self.size:
                self._kept[user_id] = state
                self._trim()
        return state

    def peek(self, user_id: str) -> UserState | None:
        """The newest state, as :meth:`get` reads it, without keeping it (a reader beside the batches)."""
        state = self._kept.get(user_id)
        if state is not None:
            return state
        if user_id in self._unwritten:
            return self._unwritten[user_id]
        return self.store.get(user_id)

    def wrote(self, dirty: Mapping[str, UserState], erased: Iterable[str]) -> None:
        """A batch's states, about to be written (``erased``: deleted); the newest kept last."""
        if self._deferred:
            unwritten = self._unwritten
            for user_id, state in dirty.items():
                unwritten[user_id] = state
            for user_id in erased:
                unwritten[user_id] = None
        if not self.size:
            return
        kept = self._kept
        for user_id, state in dirty.items():
            kept.pop(user_id, None)
            kept[user_id] = state
        for user_id in erased:
            kept.pop(user_id, None)
        self._trim()

    def defer(self) -> None:
        """From now on the caller writes states when it takes them (:meth:`take_unwritten`), not after each batch."""
        self._deferred = True

    def take_unwritten(self, user_ids: Iterable[str] | None = None) -> dict[str, UserState | None]:
        """The states batches changed since they were last taken (all, or those of ``user_ids``), the newest of
        each user (None: erased), for the caller to write to the store now."""
        if user_ids is None:
            unwritten, self._unwritten = self._unwritten, {}
            return unwritten
        waiting = self._unwritten
        return {user_id: waiting.pop(user_id) for user_id in user_ids if user_id in waiting}

    @property
    def unwritten(self) -> int:
        """Users whose newest state the store does not hold yet."""
        return len(self._unwritten)

    def clear(self) -> None:
        self._kept.clear()

    def __len__(self) -> int:
        return len(self._kept)

    def _trim(self) -> None:
        excess = len(self._kept) - self.size
        if excess > 0:
            for user_id in list(islice(self._kept, excess)):
                del self._kept[user_id]
