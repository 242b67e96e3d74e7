"""The webhook sink against a real local HTTP server that fails on purpose."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from aiohttp import web

from worker import codec
from worker.broker import free_port
from worker.triggers.webhook import WebhookSink


def record(user: str) -> dict[str, Any]:
    return {"notification_id": f"{abs(hash(user)):032x}"[:32], "user_id": user, "campaign": "c"}


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

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    delays: list[float] = []
    attempts: Counter[str] = Counter()

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    sink = WebhookSink(
        f"http://127.0.0.1:{port}/hook",
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
