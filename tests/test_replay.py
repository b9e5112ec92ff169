"""Replay against forgetting and plateaus: curriculum files mix ``curriculum.replay_share`` of mastered-level
problems (counted in the queued file and recorded in its sidecar); after ``curriculum.plateau_evals`` flat
evaluations the curriculum state records an action (replay boost, resting a skill) with reason and time, the
next file replays more, and an improvement resets it; curriculum files from before plateaus still load.

    .venv/bin/python -m pytest -x -q tests/test_replay.py
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from dojo import config, queue, steps
from skills import bin as bin_skill
from skills import curriculum as cur


def cfg_for(root: Path, **curriculum):
    return config.from_dict({"storage": {"root": str(root)}, "data": {"max_length": 128},
                             "curriculum": {"examples_per_file": 40, "low_water": 5, **curriculum}}, env={})


def queued_file(cfg) -> tuple[list[str], dict]:
    """The prompts of the only queued file, and its sidecar."""
    (entry,) = queue.queued(cfg)
    prompts = [json.loads(line)["messages"][0]["content"] for line in entry.path.read_text().splitlines()]
    meta = json.loads(entry.path.with_name(entry.path.stem + ".meta.json").read_text())
    return prompts, meta


def mastered_one(root: Path) -> None:
    state = cur.new_state(["bin"])
    state["skills"]["bin"]["level"] = 1
    cur.save(root, state)


def test_curriculum_file_mixes_mastered_levels_at_the_share(tmp_path):
    cfg = cfg_for(tmp_path / "root", replay_share=0.25)
    mastered_one(cfg.root)
    line = steps.generate_for_curriculum(cfg)
    assert "25% replayed from mastered level(s) [1]" in line
    prompts, meta = queued_file(cfg)
    params = meta["params"]
    assert params["level"] == 2 and params["replay_levels"] == [1] and params["replay_count"] == {"1": 10}
    seed = params["seed"]
    # independently: exactly 10 level-1 problems and 30 level-2 ones of the generator, in a shuffled order
    expected = Counter([p.prompt for p in bin_skill.generate(2, 30, seed)] +
                       [p.prompt for p in bin_skill.generate(1, 10, seed)])
    assert Counter(prompts) == expected and len(prompts) == 40
    level_one_space = {p.prompt for p in bin_skill.enumerate_problems(1)}
    level_two_only = [p for p in prompts if p not in level_one_space]
    assert len(level_two_only) <= 30 and any(p in level_one_space for p in prompts[:20])   # mixed in, not appended


def test_no_replay_at_level_one_or_when_off(tmp_path):
    cfg = cfg_for(tmp_path / "a", replay_share=0.25)
    steps.generate_for_curriculum(cfg)                                     # nothing is mastered yet
    assert "replay_levels" not in queued_file(cfg)[1]["params"]
    cfg = cfg_for(tmp_path / "b", replay_share=0.0)
    mastered_one(cfg.root)
    steps.generate_for_curriculum(cfg)
    assert "replay_levels" not in queued_file(cfg)[1]["params"]


def test_replay_share_is_checked():
    with pytest.raises(ValueError, match=r"curriculum.replay_share: 0.7 is not allowed; use a number in \[0, 0.5\]"):
        config.from_dict({"curriculum": {"replay_share": 0.7}}, env={})
    with pytest.raises(ValueError, match="eval.mastered_every: 0 is not allowed"):
        config.from_dict({"eval": {"mastered_every": 0}}, env={})


def test_plateau_raises_replay_is_recorded_and_resets_on_improvement(tmp_path):
    cfg = cfg_for(tmp_path / "root", replay_share=0.1, plateau_evals=3)
    mastered_one(cfg.root)
    steps.record_progress(cfg, "bin", 2, 0.40, "c0", 0)                    # the best so far
    for i, acc in enumerate([0.40, 0.35, 0.38], 1):                        # three without beating it
        state, _ = steps.record_progress(cfg, "bin", 2, acc, f"c{i}", i)
    s = json.loads((cfg.root / "state" / "curriculum.json").read_text())["skills"]["bin"]
    (action,) = s["plateau_actions"]
    assert action["action"] == ("learning rate x0.5 to 0.500 of train.learning_rate; replay boost +0.1 to 0.10")
    assert action["checkpoint"] == "c3"
    assert "3 evaluations at level 2 without beating the best 0.400" in action["reason"] and action["time"]
    assert s["plateau"]["replay_boost"] == pytest.approx(0.1) and s["plateau"]["since_best"] == 0
    assert "replay_boost" in steps.curriculum_rows(state)[0] and "replay boost" in steps.curriculum_rows(state)[0][
        "last_plateau_action"]
    steps.generate_for_curriculum(cfg)
    prompts, meta = queued_file(cfg)
    assert meta["params"]["replay_share"] == pytest.approx(0.2) and meta["params"]["replay_count"] == {"1": 8}
    state, _ = steps.record_progress(cfg, "bin", 2, 0.45, "c4", 4)          # improvement
    s = state["skills"]["bin"]
    assert s["plateau"] == {"best": 0.45, "since_best": 0, "replay_boost": 0.0, "rest": 0, "lr_scale": 0.5,
                          "slipped": None}
    assert s["plateau_actions"][-1]["action"] == "reset" and "improved to 0.450" in s["plateau_actions"][-1]["reason"]


def test_plateau_lowers_the_learning_rate_until_the_skill_advances(tmp_path):
    """curriculum.plateau_lr_factor: each plateau halves the skill's rate (never below 1/8), a new best keeps the
    lowered rate, an advance restores it, every change recorded; the skill's curriculum files train at it
    (``chunk_plan``), other files at the configured rate."""
    from model.checkpoint import sha256_file

    cfg = cfg_for(tmp_path / "root", replay_share=0.0, plateau_evals=2)
    cfg = config.from_dict({**cfg.to_dict(), "train": {"learning_rate": 0.004, "muon_lr": 0.02}}, env={})
    mastered_one(cfg.root)
    steps.record_progress(cfg, "bin", 2, 0.50, "c0", 0)
    scales = []
    for i in range(1, 11):                                       # five plateaus of two flat evaluations each
        state, _ = steps.record_progress(cfg, "bin", 2, 0.40, f"c{i}", i)
        scales.append(state["skills"]["bin"]["plateau"]["lr_scale"])
    assert scales == [1.0, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125, 0.125, 0.125, 0.125]    # floor: MIN_LR_SCALE
    actions = [a["action"] for a in state["skills"]["bin"]["plateau_actions"]]
    assert actions[:3] == [f"learning rate x0.5 to {x:.3f} of train.learning_rate; replay boost +0.1 to {b:.2f}"
                           for x, b in ((0.5, 0.1), (0.25, 0.2), (0.125, 0.3))]
    assert "learning rate" not in actions[3]                     # at the floor: only replay rises
    assert steps.curriculum_rows(state)[0]["lr_scale"] == 0.125

    steps.generate_for_curriculum(cfg)                           # a level-2 curriculum file, claimed
    claimed = steps.claim(cfg)
    assert (claimed.skill, claimed.level) == ("bin", 2)
    chunk_cfg, chunk_steps = steps.chunk_plan(cfg, claimed, 100)
    assert chunk_steps == 100
    assert chunk_cfg.train.learning_rate == pytest.approx(0.0005) and chunk_cfg.train.muon_lr == pytest.approx(0.0025)
    user = steps.Claimed(id="9", name="mine.jsonl", path=claimed.path, sha256=sha256_file(claimed.path),
                         skill=None, level=None)
    assert steps.chunk_plan(cfg, user, 100)[0].train.learning_rate == 0.004     # not a curriculum file: as set

    state, _ = steps.record_progress(cfg, "bin", 2, 0.60, "c11", 11)             # a new best keeps the rate
    assert state["skills"]["bin"]["plateau"]["lr_scale"] == 0.125
    assert state["skills"]["bin"]["plateau"]["replay_boost"] == 0.0
    steps.record_progress(cfg, "bin", 2, 0.95, "c12", 12)
    state, advance = steps.record_progress(cfg, "bin", 2, 0.95, "c13", 13)       # .60 .95 .95: mastered
    assert advance and advance["to_level"] == 3
    assert state["skills"]["bin"]["plateau"]["lr_scale"] == 1.0
    assert "learning rate back to 1.00 from 0.125" in state["skills"]["bin"]["plateau_actions"][-1]["reason"]

    never = cfg_for(tmp_path / "never", plateau_evals=2, plateau_lr_factor=1.0)
    mastered_one(never.root)
    for i, acc in enumerate([0.5, 0.4, 0.4]):
        state, _ = steps.record_progress(never, "bin", 2, acc, f"c{i}", i)
    assert state["skills"]["bin"]["plateau"]["lr_scale"] == 1.0
    assert state["skills"]["bin"]["plateau_actions"][-1]["action"] == "replay boost +0.1 to 0.10"
    with pytest.raises(ValueError, match=r"curriculum.plateau_lr_factor: 0.0 is not allowed; use a number in \(0, 1\]"):
        config.from_dict({"curriculum": {"plateau_lr_factor": 0}}, env={})


def test_plateau_raises_replay_only_while_a_mastered_level_has_slipped(tmp_path):
    """Replay does nothing for a mastered level that holds and takes the training level's share of each file: a
    plateau raises it only while the last evaluation of a mastered level found it below the promoted checkpoint
    by more than the tolerance (``slipped``); not knowing yet counts as slipped (the cautious side)."""
    cfg = cfg_for(tmp_path / "root", replay_share=0.2, plateau_evals=2)
    mastered_one(cfg.root)
    steps.record_progress(cfg, "bin", 2, 0.50, "c0", 0, slipped=[])           # level 1 evaluated: it holds
    for i in (1, 2):
        state, _ = steps.record_progress(cfg, "bin", 2, 0.40, f"c{i}", i, slipped=None if i == 2 else [])
    action = state["skills"]["bin"]["plateau_actions"][-1]
    assert action["action"] == "learning rate x0.5 to 0.500 of train.learning_rate"
    assert "replay not raised: no mastered level has slipped" in action["reason"]
    assert state["skills"]["bin"]["plateau"]["replay_boost"] == 0.0 and state["skills"]["bin"]["plateau"][
        "slipped"] == []                                                       # None: the last known list stays
    steps.generate_for_curriculum(cfg)
    assert queued_file(cfg)[1]["params"]["replay_share"] == pytest.approx(0.2)    # the configured share only
    for i in (3, 4):                                                           # level 1 drops under the guard
        state, _ = steps.record_progress(cfg, "bin", 2, 0.40, f"c{i}", i, slipped=[1])
    action = state["skills"]["bin"]["plateau_actions"][-1]
    assert action["action"] == ("learning rate x0.5 to 0.250 of train.learning_rate; replay boost +0.1 to 0.10 "
                                "(mastered level(s) [1] slipped)")
    assert steps.curriculum_rows(state)[0]["slipped_levels"] == "1"
    state, advance = steps.record_progress(cfg, "bin", 2, 0.90, "c5", 5)
    state, advance = steps.record_progress(cfg, "bin", 2, 0.90, "c6", 6)
    state, advance = steps.record_progress(cfg, "bin", 2, 0.90, "c7", 7)
    assert advance and state["skills"]["bin"]["plateau"]["slipped"] is None    # level 2 not compared yet
    stale = dict(state["skills"]["bin"]["plateau"], slipped=["1"])
    (cfg.root / "state" / "curriculum.json").write_text(json.dumps(
        {**state, "skills": {"bin": {**state["skills"]["bin"], "plateau": stale}}}))
    with pytest.raises(ValueError, match=r"slipped \(null or a list of levels\)"):
        cur.load(cfg.root, ["bin"])


def test_plateau_rests_a_skill_under_equal_and_level_one_records_none():
    state = cur.new_state(["bin", "syllo"])
    for i in range(2):
        cur.record_eval(state, "bin", 1, 0.2, f"c{i}", i, plateau_evals=2, can_switch=True)
    cur.record_eval(state, "bin", 1, 0.1, "c2", 2, plateau_evals=2, can_switch=True)
    action = state["skills"]["bin"]["plateau_actions"][-1]
    assert action["action"] == f"switch: rest bin for {cur.REST_TURNS} generated files"   # level 1: nothing to replay
    picks = [cur.choose_skill(state, "equal", ["bin", "syllo"]) for _ in range(4)]
    assert picks[:cur.REST_TURNS] == ["syllo"] * cur.REST_TURNS and "bin" in picks[cur.REST_TURNS:]
    alone = cur.new_state(["bin"])
    for i in range(3):
        cur.record_eval(alone, "bin", 1, 0.2, f"c{i}", i, plateau_evals=2)
    assert alone["skills"]["bin"]["plateau_actions"][-1]["action"] == "none"
    assert "nothing to change" in alone["skills"]["bin"]["plateau_actions"][-1]["reason"]


def test_a_curriculum_file_from_before_plateaus_loads_and_works(tmp_path):
    old = {"version": 1, "turn": 4, "files_generated": 4,
           "skills": {"bin": {"level": 1, "advanced_at": [3],
                              "history": [{"level": 1, "accuracy": 0.9, "checkpoint": "c", "step": 1}] * 3}}}
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "curriculum.json").write_text(json.dumps(old))
    state = cur.load(tmp_path, ["bin"])
    assert cur.replay_plan(state, "bin", 0.2) == ([1], 0.2)
    assert cur.record_eval(state, "bin", 2, 0.3, "d", 5, plateau_evals=3) is None
    assert state["skills"]["bin"]["plateau"]["best"] == 0.3
    bad = dict(old, skills={"bin": {**old["skills"]["bin"], "plateau": {"replay_boost": 2}}})
    (tmp_path / "state" / "curriculum.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"curriculum.json: the curriculum state skill 'bin': 'plateau' must hold"):
        cur.load(tmp_path, ["bin"])
