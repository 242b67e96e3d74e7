from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.fakes import FakeProducer
from worker.outbox import Outbox
from worker.producing import Record


def rec(topic: str, value: str) -> Record:
    return (topic, None, value.encode(), 0, None)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 5))


async def settle() -> None:
    """Let the delivery loops take what is queued and send it."""
    for _ in range(10):
        await asyncio.sleep(0)


def test_each_kind_is_delivered_before_the_next_is_sent() -> None:
    async def scenario() -> list[tuple[str, bytes]]:
        prod = FakeProducer(auto=False)
        box = Outbox(prod.send_all)
        task = asyncio.create_task(box.run())
        await box.add([rec("out", "c1")], [("u1", rec("state", "s1"))], [(0, rec("pos", "p1"))])
        await settle()
        assert prod.sent == [("out", b"c1")]  # the state waits for the change to be delivered
        prod.release()
        await settle()
        assert prod.sent[-1] == ("state", b"s1") and ("pos", b"p1") not in prod.sent
        prod.release()
        await settle()
        prod.release()
        await box.drain()
        task.cancel()
        return prod.delivered

    assert run(scenario()) == [("out", b"c1"), ("state", b"s1"), ("pos", b"p1")]


def test_batches_queued_during_a_round_go_out_as_one_round_newest_state_per_key() -> None:
    async def scenario() -> tuple[list[tuple[str, bytes]], int, list[str], list[int], list[list[tuple[bytes, int]]]]:
        prod = FakeProducer(auto=False)
        sizes: list[int] = []
        stored: list[list[tuple[bytes, int]]] = []
        box = Outbox(
            prod.send_all,
            on_round=lambda seconds, records: sizes.append(records),
            on_stored=lambda pairs: stored.append([(r[2], answer) for r, answer in pairs]),
        )
        task = asyncio.create_task(box.run())
        calls: list[str] = []
        await box.add([rec("out", "a")], [("u1", rec("state", "u1@a"))], after_all=lambda: calls.append("a"))
        await settle()  # round 1 starts with batch a
        for name in ("b", "c"):
            await box.add(
                [rec("out", name)],
                [("u1", rec("state", f"u1@{name}")), ("u2", rec("state", f"u2@{name}"))],
                [(0, rec("pos", name))],
                after_outputs=lambda n=name: calls.append(f"out {n}"),
                after_all=lambda n=name: calls.append(n),
            )
        prod.auto = True  # round 1 was in flight while b and c were queued; let everything through now
        prod.release()
        await box.drain()
        task.cancel()
        return prod.delivered, box.rounds, calls, sizes, stored

    delivered, rounds, calls, sizes, stored = run(scenario())
    assert rounds == 2
    assert sizes == [2, 5]  # a: out + state; b and c: two outs, the newest states of u1 and u2, one position
    # each kind in order; round 2's outputs may go out beside round 1's state (the rounds overlap by one kind)
    assert [v for t, v in delivered if t == "out"] == [b"a", b"b", b"c"]
    # u1's state of batch b is superseded within its round; a round's states after its outputs and the states
    # of the round before, its positions after its states
    assert [v for t, v in delivered if t != "out"] == [b"u1@a", b"u1@c", b"u2@c", b"c"]
    at = {r: i for i, r in enumerate(delivered)}
    assert at[("out", b"a")] < at[("state", b"u1@a")] < at[("state", b"u1@c")] > at[("out", b"c")]
    assert calls.index("a") < calls.index("b") < calls.index("c") and calls.index("out c") < calls.index("b")
    # states and positions of each round with the broker's answer for each (what the local store keeps)
    assert stored == [[(b"u1@a", at[("state", b"u1@a")])], [(b"u1@c", 4), (b"u2@c", 5), (b"c", 6)]]


def test_a_round_s_outputs_go_out_with_the_states_before_and_its_states_with_the_positions_before() -> None:
    async def scenario() -> None:
        prod = FakeProducer(auto=False)
        box = Outbox(prod.send_all)
        task = asyncio.create_task(box.run())
        await box.add([rec("out", "a")], [("u", rec("state", "u@a"))], [(0, rec("pos", "a"))])
        await settle()
        prod.release()  # a's change delivered: its state goes out
        await settle()
        await box.add([rec("out", "b")], [("u", rec("state", "u@b"))], [(0, rec("pos", "b"))])
        await settle()
        # b's change is sent before a's state is acknowledged (its latency does not carry a's bookkeeping) ...
        assert prod.sent == [("out", b"a"), ("state", b"u@a"), ("out", b"b")] and prod.delivered == [("out", b"a")]
        prod.release()
        await settle()
        # ... and b's state goes out once a's is acknowledged, in one send with a's position (which waited for it
        # rather than take a round trip of its own): a key's newer state never lands before its older one
        assert prod.sent[3:] == [("pos", b"a"), ("state", b"u@b")] and [r for _, r in prod.waiting] == prod.sent[3:]
        prod.auto = True
        prod.release()
        await box.drain()
        task.cancel()
        assert [v for _, v in prod.delivered] == [b"a", b"u@a", b"b", b"a", b"u@b", b"b"]

    run(scenario())


def test_a_sealed_round_is_wholly_delivered_before_anything_added_after_it() -> None:
    async def scenario() -> None:
        prod = FakeProducer(auto=False)
        box = Outbox(prod.send_all)
        task = asyncio.create_task(box.run())
        await box.add([rec("out", "a")], [("u", rec("state", "u@a"))])
        await box.add([], [], [(0, rec("pos", "model 2"))], seal=True)  # one round with a: queued together
        await box.add([rec("out", "b")], [("u", rec("state", "u@b"))], [(0, rec("pos", "b"))])
        for _ in range(3):
            await settle()
            assert ("out", b"b") not in prod.sent
            prod.release()
        await settle()
        assert prod.delivered == [("out", b"a"), ("state", b"u@a"), ("pos", b"model 2")]
        prod.auto = True
        prod.release()
        await box.drain()
        task.cancel()
        assert [v for _, v in prod.delivered[3:]] == [b"b", b"u@b", b"b"]

    run(scenario())


def test_a_failed_delivery_stops_the_loop_and_is_raised_to_producers_and_drainers() -> None:
    async def scenario() -> None:
        prod = FakeProducer()
        prod.fail_on = b"bad"
        box = Outbox(prod.send_all)
        task = asyncio.create_task(box.run())
        done: list[str] = []
        await box.add([rec("out", "bad")], [("u", rec("state", "s"))], after_all=lambda: done.append("x"))
        with pytest.raises(OSError):
            await task
        with pytest.raises(RuntimeError, match="delivery failed"):
            await box.drain()
        with pytest.raises(RuntimeError, match="delivery failed"):
            await box.add([rec("out", "next")])
        assert ("state", b"s") not in prod.sent and not done  # nothing after the failure went out

    run(scenario())


def test_back_pressure_holds_producers_while_too_much_is_queued() -> None:
    async def scenario() -> None:
        prod = FakeProducer(auto=False)
        box = Outbox(prod.send_all, max_pending=3)
        task = asyncio.create_task(box.run())
        await box.add([rec("out", "1")])
        await settle()  # taken as round 1, awaiting delivery
        await box.add([rec("out", "2"), rec("out", "3"), rec("out", "4")])
        blocked = asyncio.create_task(box.add([rec("out", "5")]))
        await settle()
        assert not blocked.done()
        prod.release()
        await asyncio.wait_for(blocked, 1)
        prod.auto = True
        prod.release()
        await box.drain()
        task.cancel()
        assert [v for _, v in prod.delivered] == [b"1", b"2", b"3", b"4", b"5"]

    run(scenario())
