"""When does a user really move? Confirmations and a minimum margin, so noise does not become a campaign."""

from __future__ import annotations

from worker.features.state import UserState
from worker.personas.registry import NEW


def decide(
    state: UserState,
    candidate: str,
    margin: float,
    *,
    n: int,
    min_events: int,
    confirmations: int,
    min_margin: float,
) -> tuple[str | None, str] | None:
    """Update the user's pending move and return ``(from, to)`` when the segment changes now.

    - First persona (from ``new``, or from no segment for a state kept before ``new`` existed) once the user has
      ``min_events`` events (``n``: events applied at this evaluation), without confirmation.
    - A different persona must win ``confirmations`` consecutive evaluations, each with at least ``min_margin``;
      an evaluation back in the current persona cancels the pending move, a weak one does not count.
    """
    current = state.segment
    if current is None or current == NEW:
        if n < min_events:
            return None
        state.pending, state.pending_n = None, 0
        return current, candidate
    if candidate == current:
        state.pending, state.pending_n = None, 0
        return None
    if margin < min_margin:
        return None
    if candidate == state.pending:
        state.pending_n += 1
    else:
        state.pending, state.pending_n = candidate, 1
    if state.pending_n >= confirmations:
        state.pending, state.pending_n = None, 0
        return current, candidate
    return None


def decide_model_update(
    state: UserState, candidate: str, margin: float, *, to: tuple[str, ...], min_margin: float
) -> tuple[str | None, str] | None:
    """A user re-placed because the model changed, not the user: ``(from, to)`` when the segment changes now.

    Nothing the user does will confirm the move (their behaviour did not change), so none is waited for: a member
    of a persona that is gone (``to`` empty) moves to the nearest one; a member of a persona that stays (a split's
    source, one an emerged persona drew from) moves when one of the personas the update made for them (``to``) is
    nearest, by ``min_margin``. Decided by the state and the model alone, and the state is only touched by a move:
    deciding again after a crash gives the same answer."""
    current = state.segment
    if candidate == current or (to and (candidate not in to or margin < min_margin)):
        return None
    state.pending, state.pending_n = None, 0
    return current, candidate
