from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from worker.errors import ConfigError
from worker.personas import ids_by_members, load_name_overrides, match_ids, name_personas
from worker.personas.naming import describe
from worker.personas.registry import small_personas


def test_ids_survive_renumbering() -> None:
    old = np.array([[0.0, 0.0], [5.0, 5.0], [10.0, 0.0]])
    new = old[[2, 0, 1]] + 0.1
    ids, nxt = match_ids(["p1", "p2", "p3"], old, new, cap=1.0, next_number=4)
    assert ids == ["p3", "p1", "p2"] and nxt == 4


def test_far_cluster_gets_a_new_id_and_old_one_retires() -> None:
    old = np.array([[0.0, 0.0], [5.0, 5.0]])
    new = np.array([[0.0, 0.1], [20.0, 20.0], [5.0, 5.0]])
    ids, nxt = match_ids(["p1", "p2"], old, new, cap=1.0, next_number=3)
    assert ids == ["p1", "p3", "p2"] and nxt == 4


def test_names_from_profiles_and_overrides() -> None:
    names = ("rate_1d:purchase", "rate_7d:purchase", "spend", "rate_7d:view")
    c = np.array([[2.0, 2.5, 1.5, -1.0], [0.0, 0.0, 0.0, 0.0]])
    assert describe(c[0], names) == "frequent purchase, big spenders, low view"
    out = name_personas(c, names, ["p1", "p2"], {"p2": "everyone else"})
    assert out == ["frequent purchase, big spenders, low view", "everyone else"]


def test_features_that_barely_vary_do_not_name_a_persona() -> None:
    names = ("daypart_night", "spend")
    c = np.array([3.0, 1.0])
    assert describe(c, names, spread=np.array([0.01, 2.0])) == "big spenders"
    assert describe(c, names, spread=np.array([0.2, 2.0])) == "night owls, big spenders"


def test_duplicate_names_are_disambiguated() -> None:
    out = name_personas(np.zeros((2, 1)), ["spend"], ["p1", "p2"], {})
    assert out == ["average activity", "average activity (p2)"]  # nothing sets them apart: the id does


def test_a_new_name_never_repeats_another_in_other_words() -> None:
    """The demo once listed p2 "frequent like, frequent share, low view_product" beside a new p5 "frequent share,
    frequent like, low view_product": the same phrases in another order. The new one says how it differs."""
    names = ("rate_7d:like", "rate_7d:share", "rate_7d:view_product", "days_since_last_event")
    c = np.array([[2.0, 1.5, -1.0, -0.2], [1.5, 2.0, -1.0, 1.4]])
    kept = {"p2": "frequent like, frequent share, low view_product"}
    assert describe(c[1], names) == "frequent share, frequent like, low view_product"
    out = name_personas(c, names, ["p2", "p5"], {}, kept=kept)
    assert out == [kept["p2"], "frequent share, frequent like, low view_product, lapsing"]
    # both new: the second one found says how it differs from the first
    both = name_personas(c[[1, 0]], names, ["p5", "p2"], {})
    assert both[0] == "frequent share, frequent like, low view_product"
    assert both[1] == "frequent like, frequent share, low view_product, recently active"
    # an operator's name is never changed, and a new name does not take it either
    op = name_personas(c, names, ["p2", "p5"], {"p2": "frequent share, frequent like, low view_product"})
    assert op[0] == "frequent share, frequent like, low view_product" and op[1].endswith(", lapsing")


def test_override_files(tmp_path: Path) -> None:
    toml = tmp_path / "names.toml"
    toml.write_text('p1 = "creators"\np2 = "readers"\n')
    assert load_name_overrides(str(toml)) == {"p1": "creators", "p2": "readers"}
    js = tmp_path / "names.json"
    js.write_text('{"p3": "couponers"}')
    assert load_name_overrides(str(js)) == {"p3": "couponers"}
    bad = tmp_path / "bad.json"
    bad.write_text("[1]")
    with pytest.raises(ConfigError):
        load_name_overrides(str(bad))
    assert load_name_overrides("") == {}


def test_a_split_gives_the_fresh_id_to_the_part_that_left_not_to_the_larger_part() -> None:
    old = np.zeros(10, dtype=np.int64)  # everyone in p4
    new = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1])  # cluster 1 kept seven of them
    assert ids_by_members(["p4"], old, new, 2, 5) == (["p5", "p4"], 6)


def test_a_merge_keeps_the_id_that_keeps_most_users_and_retires_the_other() -> None:
    old = np.array([0, 0, 0, 1, 1, 2])
    new = np.array([0, 0, 0, 0, 0, 1])
    assert ids_by_members(["p1", "p2", "p3"], old, new, 2, 4) == (["p1", "p3"], 4)
    # the same partition numbered the other way round keeps the same ids for the same users
    assert ids_by_members(["p1", "p2", "p3"], old, 1 - new, 2, 4) == (["p3", "p1"], 4)


def test_small_personas_are_counted_among_the_users_in_a_persona() -> None:
    ids = ["p1", "p2", "p3"]
    counts = {"p1": 500, "p2": 495, "p3": 5, "dormant": 10_000, "new": 3}  # p3: 0.5 % of the 1,000 in a persona
    assert small_personas(ids, counts) == 1
    assert small_personas(ids, {**counts, "p3": 11}) == 0  # 11 of 1,006: over 1 %
    assert small_personas(["p1", "p4"], {"p1": 50}) == 1  # a persona nobody is in yet
    assert small_personas(ids, {"new": 7}) == 0  # nobody placed: nothing to compare with
