from __future__ import annotations

import pytest

from worker.events.timefmt import parse_timestamp
from worker.synth.population import generate_world
from worker.synth.scenarios import SCENARIOS, world


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenarios_are_reproducible_and_keep_their_promise(name: str) -> None:
    a = generate_world(world(name, 3), 200, 28, 3)
    b = generate_world(world(name, 3), 200, 28, 3)
    assert a.events == b.events and a.truth == b.truth
    truth = list(a.truth.values())
    w = world(name, 3)
    diverging = 0.0  # a split world's users who take up the new behaviour switch too
    if w.diverging is not None:
        diverging = w.diverge_share * w.personas[w.diverge_from].share / sum(p.share for p in w.personas)
    assert sum(t.switch_at is not None for t in truth) == pytest.approx(200 * (w.switch_share + diverging), abs=20)
    once = {p.name for p in w.personas if p.once}
    assert sum(t.silent_at is not None and t.persona not in once for t in truth) == pytest.approx(
        200 * w.silent_share, abs=20
    )
    # a one-time customer stopped at their one event, and is dormant in the end
    last = {e["user_id"]: e["timestamp"] for e in a.events}
    for t in truth:
        if t.persona in once:
            assert t.final == "dormant" and t.silent_at == parse_timestamp(last[t.user_id])
    if w.emerging is not None:
        late = [t for t in truth if t.joined_at is not None]
        assert len(late) == 30 and all(t.final == w.emerging.name for t in late)
        first_seen = {}
        for e in a.events:
            first_seen.setdefault(e["user_id"], e)
        assert all(t.user_id in first_seen for t in late)


def test_personas_differ_between_seeds() -> None:
    assert world("stable", 1).personas != world("stable", 2).personas
