"""Pseudonymous user ids: an HMAC of the raw id under a configured secret (``SEGMENT_WORKER_PSEUDONYM_KEY``).

Applied at ingest, to events and erasure requests alike, and by the API to the id it is asked about, so state and
outputs hold only the pseudonym. Without the secret the pseudonym cannot be reversed or recomputed (a plain hash
of a guessable id could be); with it, the same raw id always gives the same pseudonym, so a user keeps one
profile. 32 hex digits (128 bits): collisions are out of reach at any user count.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

PSEUDONYM_HEX = 32


def pseudonymizer(key: str) -> Callable[[str], str]:
    """Raw user id → the id the worker keeps: the identity without a key."""
    if not key:
        return _identity
    secret = key.encode()

    def pseudonym(user_id: str) -> str:
        return hmac.new(secret, user_id.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX]

    return pseudonym


def _identity(user_id: str) -> str:
    return user_id
