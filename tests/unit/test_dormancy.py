from __future__ import annotations

from worker.changes.dormancy import DAY_MS, DEFAULT_TYPICAL_GAP_MS, Dormancy
from worker.events.ingest import UserEvent
from worker.features.state import UserState, apply_event

T0 = 1_767_225_600_000
HOUR = 3_600_000
HL = (DAY_MS, 7.0 * DAY_MS)


def user(times: list[int]) -> UserState:
    state = UserState(len(HL))
    for t in times:
        apply_event(state, UserEvent("u", "view", t, None, None, None, None), HL, 12, 1_800_000)
    return state


def cadence(typical_gap_ms: float = DEFAULT_TYPICAL_GAP_MS, checks: tuple[int, ...] = ()) -> Dormancy:
    return Dormancy(None, 8.0, 7 * DAY_MS, typical_gap_ms, checks)


def test_a_ten_a_day_user_lapses_after_a_quiet_week_a_quarterly_buyer_not_after_a_month() -> None:
    busy = user([T0 + i * 10 * HOUR // 10 for i in range(100)])  # ten a day for ten days
    assert cadence().after_ms(busy) == 7 * DAY_MS  # the floor
    quarterly = user([T0 + q * 91 * DAY_MS for q in range(4)])
    after = cadence().after_ms(quarterly)
    assert after > 2 * 91 * DAY_MS and after > 30 * DAY_MS


def test_a_weekend_only_user_is_not_lapsed_by_the_week_between() -> None:
    weekends = [T0 + w * 7 * DAY_MS + d * DAY_MS + h * HOUR for w in range(3) for d in (5, 6) for h in range(10, 20, 2)]
    state = user(weekends)
    assert state.max_gap > 5 * DAY_MS
    assert cadence().after_ms(state) >= 2 * state.max_gap  # twice the longest silence the user came back from


def test_one_event_users_are_judged_by_the_streams_typical_gap() -> None:
    once = user([T0])
    assert cadence(DEFAULT_TYPICAL_GAP_MS).after_ms(once) == 14 * DAY_MS
    assert cadence(30 * DAY_MS).after_ms(once) == 240 * DAY_MS  # a shop whose customers buy monthly
    # two purchases on one day do not make a customer daily: the stream's gap weighs in
    same_day = user([T0, T0 + HOUR])
    assert cadence(30 * DAY_MS).after_ms(same_day) > 150 * DAY_MS


def test_the_operator_fixes_one_silence_or_none() -> None:
    state = user([T0, T0 + DAY_MS])
    fixed = Dormancy(14 * DAY_MS, 8.0, 7 * DAY_MS, DEFAULT_TYPICAL_GAP_MS, (2 * DAY_MS, 30 * DAY_MS))
    assert fixed.after_ms(state) == 14 * DAY_MS
    assert [fixed.next_check(state, s) for s in (0, 2 * DAY_MS, 14 * DAY_MS)] == [
        state.last_ts + 2 * DAY_MS,
        state.last_ts + 14 * DAY_MS,  # the check at 30 days is beyond dormancy: never run
        0,
    ]
    never = Dormancy(0, 8.0, 7 * DAY_MS, DEFAULT_TYPICAL_GAP_MS, (2 * DAY_MS,))
    assert never.after_ms(state) == 0
    assert [never.next_check(state, s) for s in (0, 2 * DAY_MS)] == [state.last_ts + 2 * DAY_MS, 0]


def test_a_new_typical_gap_applies_to_a_state_as_it_is() -> None:
    state = user([T0, T0 + DAY_MS])
    before = state.to_fields()
    short, long = cadence(DAY_MS).after_ms(state), cadence(20 * DAY_MS).after_ms(state)
    assert short < long and state.to_fields() == before
    assert cadence(20 * DAY_MS, (DAY_MS,)).next_check(state, 0) == state.last_ts + DAY_MS
    assert cadence(20 * DAY_MS, (DAY_MS,)).next_check(state, DAY_MS) == state.last_ts + long


def test_lapsing_comes_at_its_share_of_the_dormancy_silence_and_after_the_longest_gap() -> None:
    rule = Dormancy(None, 8.0, 7 * DAY_MS, DEFAULT_TYPICAL_GAP_MS, (), lapsing_share=0.75)
    once = user([T0])
    assert rule.lapsing_ms(once, rule.after_ms(once)) == int(0.75 * 14 * DAY_MS)
    weekends = [T0 + w * 7 * DAY_MS + d * DAY_MS + h * HOUR for w in range(3) for d in (5, 6) for h in range(10, 20, 2)]
    state = user(weekends)
    lapse = rule.lapsing_ms(state, rule.after_ms(state))
    assert lapse >= 1.25 * state.max_gap > 5 * DAY_MS  # not lapsing over the week between two weekends
    checks = []
    silence = 0
    while due := rule.next_check(state, silence):
        checks.append(due - state.last_ts)
        silence = checks[-1]
    assert checks == [lapse, rule.after_ms(state)]  # lapsing, then dormant
    assert Dormancy(None, 8.0, 7 * DAY_MS, DEFAULT_TYPICAL_GAP_MS).lapsing_ms(once, 14 * DAY_MS) == 0  # share 0
    assert rule.lapsing_ms(once, 0) == 0  # nobody goes dormant: nobody lapses


def test_a_user_dormant_after_the_minimum_silence_has_no_lapsing_stage() -> None:
    rule = Dormancy(None, 8.0, 7 * DAY_MS, 0.1 * DAY_MS, (), lapsing_share=0.75, lapsing_floor_ms=7 * DAY_MS)
    busy = user([T0 + i * HOUR for i in range(50)])
    assert rule.after_ms(busy) == 7 * DAY_MS and rule.lapsing_ms(busy, 7 * DAY_MS) == 0
    sparse = Dormancy(None, 8.0, 7 * DAY_MS, 30 * DAY_MS, (), lapsing_share=0.75, lapsing_floor_ms=7 * DAY_MS)
    once = user([T0])
    assert sparse.lapsing_ms(once, sparse.after_ms(once)) == int(0.75 * 240 * DAY_MS)
