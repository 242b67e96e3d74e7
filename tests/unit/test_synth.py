from __future__ import annotations

from worker.synth import generate
from worker.synth.agreement import agreement


def test_population_is_reproducible_and_has_switchers_and_silent_users() -> None:
    a = generate(200, 21, seed=5)
    b = generate(200, 21, seed=5)
    assert a.events == b.events
    assert any(t.switch_at for t in a.truth.values()) and any(t.silent_at for t in a.truth.values())
    for t in a.truth.values():
        if t.silent_at:
            assert max(e_t for e_t in _times(a, t.user_id)) < t.silent_at


def _times(pop, uid):  # type: ignore[no-untyped-def]
    from worker.events import parse_timestamp

    return [parse_timestamp(e["timestamp"]) for e in pop.events if e["user_id"] == uid]


def test_agreement_of_the_truth_with_itself_is_perfect() -> None:
    pop = generate(150, 21, seed=2)
    final = {u: t.final for u, t in pop.truth.items()}
    a = agreement(final, pop.truth)
    assert a.ari == 1.0 and a.assigned == 150
    assert a.switchers_detected == a.switchers and a.silent_moved == a.silent
