"""Curriculum policy: which skill and level to train, and when a level is mastered.

State lives in ``state/curriculum.json`` under the storage root: per skill, ``level`` is the highest
**mastered** level (0 = none yet) and training happens on ``level + 1``; ``history`` holds every evaluation at
the training level (checkpoint, step, accuracy, time). A skill advances when the mean of its last
``window`` (3) evaluations at the training level is ≥ ``threshold`` (0.80); the window restarts after an
advance. Strategies choose the skill to generate for: ``equal`` (round robin), ``focus`` (the first skill in
priority order until mastered), ``weighted`` (random by weight, seeded), ``catch_up`` (lowest level first).

Plain functions over plain dicts, written atomically; no Prefect, no torch.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import random
from pathlib import Path

from skills import SKILLS

WINDOW = 3
THRESHOLD = 0.80
STRATEGIES = ("equal", "focus", "weighted", "catch_up")


def state_path(root: Path) -> Path:
    return Path(root) / "state" / "curriculum.json"


def new_state(skills: list[str]) -> dict:
    unknown = [s for s in skills if s not in SKILLS]
    if unknown:
        raise ValueError(f"unknown skill(s) {unknown}; known: {', '.join(SKILLS)}")
    return {"version": 1, "turn": 0,
            "skills": {s: {"level": 0, "history": [], "advanced_at": []} for s in skills}}


def load(root: Path, skills: list[str]) -> dict:
    """The curriculum state, created for ``skills`` when missing; skills added to config are added here."""
    path = state_path(root)
    state = json.loads(path.read_text(encoding="utf-8")) if path.exists() else new_state(skills)
    for s in skills:
        state["skills"].setdefault(s, new_state([s])["skills"][s])
    return state


def save(root: Path, state: dict) -> None:
    path = state_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def training_level(state: dict, skill: str) -> int:
    """The level being trained: one above the highest mastered, capped at the skill's top level."""
    top = max(SKILLS[skill].LEVELS)
    return min(state["skills"][skill]["level"] + 1, top)


def record_eval(state: dict, skill: str, level: int, accuracy: float, checkpoint: str, step: int,
                window: int = WINDOW, threshold: float = THRESHOLD) -> dict | None:
    """Append an evaluation at the training level; advance when the window's mean clears the threshold.

    Evaluations at other levels are not history for advancement (they are regression checks). Returns the
    advance record ``{skill, from_level, to_level, mean, checkpoint}`` when the skill advanced, else None.
    """
    s = state["skills"][skill]
    if level != training_level(state, skill):
        return None
    s["history"].append({"level": level, "accuracy": accuracy, "checkpoint": checkpoint, "step": step,
                         "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    since = s["advanced_at"][-1] if s["advanced_at"] else 0
    recent = [h["accuracy"] for h in s["history"][since:] if h["level"] == level][-window:]
    # 1e-9: a mean of exactly the threshold (e.g. .5 .95 .95) must not fail on float rounding
    if len(recent) < window or sum(recent) / window < threshold - 1e-9 or s["level"] >= max(SKILLS[skill].LEVELS):
        return None
    s["level"] = level
    s["advanced_at"].append(len(s["history"]))
    return {"skill": skill, "from_level": level, "to_level": training_level(state, skill),
            "mean": sum(recent) / window, "checkpoint": checkpoint}


def mastered(state: dict, skill: str) -> bool:
    return state["skills"][skill]["level"] >= max(SKILLS[skill].LEVELS)


def choose_skill(state: dict, strategy: str, priority: list[str], weights: dict[str, float] | None = None,
                 seed: int = 0) -> str:
    """Pick the skill to generate data for next (advances the round-robin turn)."""
    skills = [s for s in priority if s in state["skills"]]
    if not skills:
        raise ValueError("the curriculum has no skills configured")
    open_skills = [s for s in skills if not mastered(state, s)] or skills
    turn = state.get("turn", 0)
    state["turn"] = turn + 1
    if strategy == "equal":
        return open_skills[turn % len(open_skills)]
    if strategy == "focus":
        return open_skills[0]
    if strategy == "catch_up":
        return min(open_skills, key=lambda s: (state["skills"][s]["level"], skills.index(s)))
    if strategy == "weighted":
        w = [max(0.0, (weights or {}).get(s, 1.0)) for s in open_skills]
        if not any(w):
            raise ValueError("curriculum weights are all zero")
        return random.Random(f"{seed}:{turn}").choices(open_skills, weights=w)[0]
    raise ValueError(f"unknown curriculum strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
