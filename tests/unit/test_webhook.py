"""The webhook sink against a real local HTTP server that fails on purpose."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from aiohttp import web

from worker import codec
from worker.broker import free_port
from worker.settings import Settings
from worker.triggers.webhook import WebhookSink


def record(user: str) -> dict[str, Any]:
    return {"notification_id": f"{abs(hash(user)):032x}"[:32], "user_id": user, "campaign": "c"}


async def serve(handle: Any) -> tuple[web.AppRunner, str]:
    """A local HTTP server posting to ``handle``; its runner (to clean up) and the hook's URL."""
    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/hook"


async def scenario() -> tuple[list[Any], Counter[str], list[float], dict[str, list[str]], Counter[str]]:
    calls: Counter[str] = Counter()
    keys: dict[str, list[str]] = {}

    async def handle(request: web.Request) -> web.Response:
        body = codec.loads(await request.read())
        user = body["user_id"]
        calls[user] += 1
        keys.setdefault(user, []).append(request.headers["Idempotency-Key"])
        if user.startswith("flaky") and calls[user] <= 2:
            return web.Response(status=503)
        if user.startswith("down"):
            return web.Response(status=500)
        if user.startswith("refused"):
            return web.Response(status=400)
        if user.startswith("slow") and calls[user] == 1:
            await asyncio.sleep(1.0)  # beyond the client's timeout
        return web.Response(status=204)

    runner, url = await serve(handle)
    delays: list[float] = []
    attempts: Counter[str] = Counter()

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    sink = WebhookSink(
        url,
        max_attempts=4,
        backoff=0.25,
        timeout=0.5,
        on_attempt=lambda outcome: attempts.update([outcome]),
        sleep=sleep,
    )
    try:
        outcomes = await sink.deliver([record(u) for u in ("ok-1", "flaky-1", "down-1", "refused-1", "slow-1")])
    finally:
        await sink.close()
        await runner.cleanup()
    return outcomes, calls, delays, keys, attempts


def test_retries_with_backoff_then_gives_up_and_refusals_are_final() -> None:
    outcomes, calls, delays, keys, attempts = asyncio.run(scenario())
    by_user = {o.record["user_id"]: o for o in outcomes}
    assert [o.record["user_id"] for o in outcomes] == ["ok-1", "flaky-1", "down-1", "refused-1", "slow-1"]
    assert (by_user["ok-1"].delivered, by_user["ok-1"].attempts) == (True, 1)
    assert (by_user["flaky-1"].delivered, by_user["flaky-1"].attempts) == (True, 3)  # two 503s, then taken
    assert (by_user["down-1"].delivered, by_user["down-1"].attempts, by_user["down-1"].error) == (False, 4, "HTTP 500")
    assert (by_user["refused-1"].delivered, by_user["refused-1"].attempts) == (False, 1)  # 400: not retried
    assert by_user["slow-1"].delivered and by_user["slow-1"].attempts == 2  # the timed-out request is retried
    assert calls == {"ok-1": 1, "flaky-1": 3, "down-1": 4, "refused-1": 1, "slow-1": 2}
    # exponential backoff: flaky waits 0.25, 0.5; down 0.25, 0.5, 1.0; slow 0.25
    assert sorted(delays) == sorted([0.25, 0.5, 0.25, 0.5, 1.0, 0.25])
    assert all(len(set(k)) == 1 for k in keys.values())  # the same idempotency key on every attempt
    assert attempts == {"ok": 3, "retry": 6, "failed": 2}


class Clock:
    """Time that passes only when the sink waits: the default backoff's seconds without spending them."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)


async def with_defaults() -> dict[str, tuple[Any, list[float]]]:
    """One receiver that fails twice and one that is down, each posted alone through a sink made as the trigger
    service makes it, from default settings: each one's outcome and the waits between its attempts."""
    calls: Counter[str] = Counter()

    async def handle(request: web.Request) -> web.Response:
        user = codec.loads(await request.read())["user_id"]
        calls[user] += 1
        return web.Response(status=204 if user == "flaky" and calls[user] > 2 else 503)

    runner, url = await serve(handle)
    out = {}
    try:
        for user in ("flaky", "down"):
            clock = Clock()
            sink = WebhookSink.from_settings(Settings(webhook_url=url), sleep=clock.sleep)
            assert sink is not None
            try:
                (outcome,) = await sink.deliver([record(user)])
            finally:
                await sink.close()
            out[user] = (outcome, clock.waits)
    finally:
        await runner.cleanup()
    return out


def test_default_settings_try_five_times_over_seven_and_a_half_seconds() -> None:
    assert (Settings().webhook_max_attempts, Settings().webhook_backoff) == (5, 0.5)  # README's defaults
    assert WebhookSink.from_settings(Settings()) is None  # no WEBHOOK_URL: nothing is posted
    got = asyncio.run(with_defaults())
    flaky, flaky_waits = got["flaky"]
    assert (flaky.delivered, flaky.attempts, flaky_waits) == (True, 3, [0.5, 1.0])
    down, down_waits = got["down"]
    assert (down.delivered, down.attempts, down.error) == (False, 5, "HTTP 503")
    assert down_waits == [0.5, 1.0, 2.0, 4.0]  # 7.5 s of backoff before a notification is dead-lettered
