"""Which partition owns a user, as the per-event path asks it (twice an event: routing and the silence index).

The user table records every key's changelog partition as it sets or recovers the key, and a dict lookup there is
much cheaper than the murmur2 partitioner, whose cache does not cover more than 65k users (a scan of a million took
nine seconds). A compiled class rather than a closure in the app: an interpreted function called from the compiled
core is where the interpreter hands its lock to the consumer's and the outbox's threads in the middle of a batch
(py-spy of a paced run: 10 % of the main thread's samples waited in this closure for it to come back). Compiled, the
lookup costs less; the other threads still get the lock, at the next interpreted step (README, *Performance*).
"""

from __future__ import annotations

from collections.abc import Callable


class UserPartitions:
    def __init__(self, known: dict[str, int], partition_of: Callable[[str], int]) -> None:
        """``known``: user id → partition as the user table records it (shared, not copied: the table keeps it up
        to date); ``partition_of``: the partitioner, for a user the table has not seen."""
        self.known = known
        self.partition_of = partition_of

    def __call__(self, user_id: str) -> int:
        p = self.known.get(user_id)
        return self.partition_of(user_id) if p is None else p
