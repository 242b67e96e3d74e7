"""Positions of the consumed partitions: gates, durable and committed positions, the probe schedule."""

from __future__ import annotations

from worker.runtime.positions import Positions


def test_positions_kept_in_state_durable_then_committed() -> None:
    pos = Positions(["input", "by_user"])
    pos.open("input", 0, 10, 0.0)
    pos.open("input", 1, 20, 0.0)
    pos.open("by_user", 1, 5, 0.0)
    assert sorted(pos.current()) == [("by_user", 1, 5), ("input", 0, 10), ("input", 1, 20)]
    assert pos.state_of(1) == {"input": 20, "by_user": 5} and pos.state_of(7) == {}
    assert pos.to_commit() == {}  # nothing delivered yet: nothing to tell the group
    pos.stored({("input", 0): 10, ("input", 1): 20})
    assert pos.to_commit() == {("input", 0): 10, ("input", 1): 20}
    pos.was_committed({("input", 0): 10})
    assert pos.to_commit() == {("input", 1): 20}
    pos.keep({0})  # partition 1 went to another member
    assert list(pos.current()) == [("input", 0, 10)]
    assert pos.to_commit() == {} and pos.durable == {("input", 0): 10}
    pos.close_all()
    assert list(pos.current()) == []


def test_probes_back_off_and_apply_what_two_probes_found() -> None:
    pos = Positions(["input"], probe_after=5.0, probe_max=30.0)
    pos.open("input", 0, 100, 0.0)
    assert not pos.probe_due("input", 0, 4.9) and pos.probe_due("input", 0, 5.0)
    # nothing after the position: the wait doubles up to the maximum
    waits = []
    now = 5.0
    for _ in range(4):
        assert not pos.probed("input", 0, 100, False, now)
        waits.append(pos.waited("input", 0))
        now += waits[-1]
        assert not pos.probe_due("input", 0, now - 0.1) and pos.probe_due("input", 0, now)
    assert waits == [10.0, 20.0, 30.0, 30.0]
    # records found: the consumer may be on its way; found again at the same position a probe later: apply them
    assert not pos.probed("input", 0, 100, True, now)
    assert pos.probed("input", 0, 100, True, now + 30.0)
    # the position moved: probing waits from scratch
    pos.advanced("input", [0], now + 31.0)
    assert pos.waited("input", 0) == 5.0 and not pos.probe_due("input", 0, now + 35.0)
    assert not pos.probed("input", 0, 140, True, now + 36.0)  # new records at a new position: wait a probe
