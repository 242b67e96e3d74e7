"""The HTTP webhook sink of ``segment-worker triggers``: each notification for a treated user is POSTed as JSON.

A delivery is retried with exponential backoff (``webhook_backoff`` seconds, doubling, up to
``webhook_max_attempts`` attempts) on a connection error, a timeout, a 5xx or a 429; any other 4xx is final at
once (the receiver refuses it). A notification that is not delivered in the end goes to the dead-letter topic
``<notifications topic>-dlq`` with why. Each request carries ``Idempotency-Key: <notification_id>``: after a crash
a notification may be posted again, and the receiver dedupes by it. Holdout notifications are not posted (they
stay on the notifications topic, for measurement).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from worker import codec
from worker.settings import Settings

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Outcome:
    record: dict[str, Any]
    delivered: bool
    attempts: int
    error: str  # the last failure ("" when delivered)


class WebhookSink:
    def __init__(
        self,
        url: str,
        max_attempts: int,
        backoff: float,
        timeout: float,
        concurrency: int = 16,
        on_attempt: Callable[[str], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.url = url
        self.max_attempts = max(1, max_attempts)
        self.backoff = backoff
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self._limit = asyncio.Semaphore(concurrency)
        self._on_attempt = on_attempt  # called with "ok", "retry" or "failed" per attempt
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_settings(
        cls,
        s: Settings,
        on_attempt: Callable[[str], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> WebhookSink | None:
        """The sink ``WEBHOOK_URL`` and its attempts, backoff and timeout settings describe; None without a URL."""
        if not s.webhook_url:
            return None
        attempts, backoff, timeout = s.webhook_max_attempts, s.webhook_backoff, s.webhook_timeout
        return cls(s.webhook_url, attempts, backoff, timeout, on_attempt=on_attempt, sleep=sleep)

    async def deliver(self, records: list[dict[str, Any]]) -> list[Outcome]:
        """Post every record (concurrently, bounded); returns each one's outcome, in order."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return list(await asyncio.gather(*(self._one(r) for r in records)))

    async def _one(self, record: dict[str, Any]) -> Outcome:
        assert self._session is not None
        body = codec.dumps(record)
        headers = {"Content-Type": "application/json", "Idempotency-Key": record["notification_id"]}
        error = ""
        for attempt in range(1, self.max_attempts + 1):
            async with self._limit:
                try:
                    async with self._session.post(self.url, data=body, headers=headers) as resp:
                        await resp.read()
                        if resp.status < 300:
                            self._count("ok")
                            return Outcome(record, True, attempt, "")
                        error = f"HTTP {resp.status}"
                        final = resp.status not in RETRY_STATUS
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    error, final = f"{type(exc).__name__}: {exc}"[:200], False
            if final or attempt == self.max_attempts:
                self._count("failed")
                return Outcome(record, False, attempt, error)
            self._count("retry")
            await self._sleep(self.backoff * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    def _count(self, what: str) -> None:
        if self._on_attempt is not None:
            self._on_attempt(what)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
