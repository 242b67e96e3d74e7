"""When does a user really move? Confirmations and a minimum margin, so noise does not become a campaign."""

from __future__ import annotations

from worker.features.state import UserState


def decide(
    state: UserState,
    candidate: str,
    margin: float,
    *,
    n: int,
    min_events: int,
    confirmations: int,
    min_margin: float,
    immediate: bool = False,
) -> tuple[str | None, str] | None:
    """Update the user's pending move and return ``(from, to)`` when the segment changes now.

    - First assignment once the user has ``min_events`` events (``n``: events applied at this evaluation).
    - A different persona must win ``confirmations`` consecutive evaluations, each with at least ``min_margin``;
      an evaluation back in the current persona cancels the pending move, a weak one does not count.
    - ``immediate`` (rule-based moves such as dormancy) skips confirmation.
    """
    current = state.segment
    if current is None:
        if n < min_events:
            return None
        state.pending, state.pending_n = None, 0
        return None, candidate
    if candidate == current:
        state.pending, state.pending_n = None, 0
        return None
    if immediate:
        state.pending, state.pending_n = None, 0
        return current, candidate
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
