"""Curriculum advancement (mean of the last 3 evals at the training level >= 0.80), skill strategies, and
promotion decisions with their atomic pointer."""
import json

import pytest

from dojo import promotion
from skills import curriculum as cur


def test_advances_on_the_mean_of_the_last_three_at_the_training_level(tmp_path):
    state = cur.new_state(["bin"])
    assert cur.training_level(state, "bin") == 1
    assert cur.record_eval(state, "bin", 1, 0.9, "c1", 1) is None      # one eval is not a window
    assert cur.record_eval(state, "bin", 1, 0.9, "c2", 2) is None
    assert cur.record_eval(state, "bin", 2, 1.0, "c2", 2) is None      # other levels are not history
    assert cur.record_eval(state, "bin", 1, 0.5, "c3", 3) is None      # mean 0.767 < 0.8
    advance = cur.record_eval(state, "bin", 1, 0.95, "c4", 4)           # last three: .9 .5 .95 = 0.783
    assert advance is None
    advance = cur.record_eval(state, "bin", 1, 0.95, "c5", 5)           # .5 .95 .95 = 0.8
    assert advance == {"skill": "bin", "from_level": 1, "to_level": 2, "mean": pytest.approx(0.8), "checkpoint": "c5"}
    assert state["skills"]["bin"]["level"] == 1 and cur.training_level(state, "bin") == 2
    # the window restarts at the new level
    assert cur.record_eval(state, "bin", 2, 0.9, "c6", 6) is None
    cur.save(tmp_path, state)
    assert cur.load(tmp_path, ["bin"]) == state


def test_strategies():
    state = cur.new_state(["bin", "syllo"])
    skills = list(state["skills"])
    assert [cur.choose_skill(state, "equal", skills) for _ in range(4)] == (skills * 4)[:4]
    assert cur.choose_skill(state, "focus", skills) == skills[0]
    state["skills"][skills[0]]["level"] = 3
    assert cur.choose_skill(state, "catch_up", skills) == (skills[1] if len(skills) > 1 else skills[0])
    with pytest.raises(ValueError, match="unknown curriculum strategy"):
        cur.choose_skill(state, "random", skills)


def test_weighted_strategy_follows_weights():
    state = cur.new_state(["bin", "syllo"])
    picks = [cur.choose_skill(state, "weighted", ["bin", "syllo"], {"bin": 0.9, "syllo": 0.1}, seed=1)
             for _ in range(1000)]
    # expected ~900; a uniform chooser (or one that ignores weights) gives ~500
    assert picks.count("bin") > 800 and picks.count("syllo") > 0
    # the other way round, so a chooser that always favours the first skill fails too
    picks = [cur.choose_skill(state, "weighted", ["bin", "syllo"], {"bin": 0.1, "syllo": 0.9}, seed=2)
             for _ in range(1000)]
    assert picks.count("syllo") > 800
    # weight 0: never chosen
    picks = {cur.choose_skill(state, "weighted", ["bin", "syllo"], {"bin": 0.0, "syllo": 1.0}, seed=3)
             for _ in range(300)}
    assert picks == {"syllo"}


def test_mastered_skill_is_skipped():
    state = cur.new_state(["bin"])
    state["skills"]["bin"]["level"] = 7
    assert cur.mastered(state, "bin") and cur.training_level(state, "bin") == 7
    assert cur.record_eval(state, "bin", 7, 1.0, "c", 1) is None


def test_first_checkpoint_is_promoted_and_pointer_is_atomic(tmp_path):
    d = promotion.decide("ck-1", {"1": 0.4}, None, "bin", 1, [])
    assert d.promote and "first promotion" in d.reason
    promotion.apply(tmp_path, d, "/x/ck-1", {"bin": {"1": 0.4}})
    pointer = promotion.current(tmp_path)
    assert pointer["checkpoint"] == "ck-1" and pointer["reason"] == d.reason
    assert not [p for p in (tmp_path / "state").iterdir() if ".tmp" in p.name]


def test_promotion_needs_a_win_without_regression(tmp_path):
    promoted = {"checkpoint": "ck-1", "eval": {"bin": {"1": 0.95, "2": 0.50}}}
    worse = promotion.decide("ck-2", {"1": 0.95, "2": 0.45}, promoted, "bin", 2, [1])
    assert not worse.promote and "does not beat" in worse.reason
    regress = promotion.decide("ck-3", {"1": 0.80, "2": 0.70}, promoted, "bin", 2, [1], tolerance=0.05)
    assert not regress.promote and "regression on mastered level 1" in regress.reason
    ok = promotion.decide("ck-4", {"1": 0.92, "2": 0.70}, promoted, "bin", 2, [1], tolerance=0.05)
    assert ok.promote and "beats the promoted 0.500" in ok.reason
    promotion.apply(tmp_path, regress, "/x/ck-3", {})
    promotion.apply(tmp_path, ok, "/x/ck-4", {"bin": {"1": 0.92, "2": 0.70}})
    log = [json.loads(line) for line in (tmp_path / "state" / "promotions.jsonl").read_text().splitlines()]
    assert [e["promote"] for e in log] == [False, True]
    assert promotion.current(tmp_path)["checkpoint"] == "ck-4"
    assert "Promoted" in ok.markdown() and "Not promoted" in regress.markdown()
