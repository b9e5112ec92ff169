"""Curriculum policy: which skill and level to train, and when a level is mastered.

State lives in ``state/curriculum.json`` under the storage root: per skill, ``level`` is the highest
**mastered** level (0 = none yet) and training happens on ``level + 1``; ``history`` holds every evaluation at
the training level (checkpoint, step, accuracy, time). A skill advances when the mean of its last
``window`` (3) evaluations at the training level is ≥ ``threshold`` (0.80); the window restarts after an
advance. Strategies choose the skill to generate for: ``equal`` (round robin), ``focus`` (the first skill in
priority order until mastered), ``weighted`` (random by weight, seeded), ``catch_up`` (lowest level first).

Plateaus: each skill also keeps ``plateau`` (the best accuracy at the training level since it was reached, the
evaluations since that best, the replay boost, the turns it rests and the learning-rate scale) and
``plateau_actions`` (every action with its reason and time). When ``plateau_evals`` evaluations in a row do not
beat the best, ``record_eval`` acts: it multiplies the skill's learning-rate scale by ``lr_factor`` (down to
``MIN_LR_SCALE``; its curriculum files train at ``train.learning_rate`` × the scale), raises the share of
mastered-level problems replayed in curriculum files by ``REPLAY_STEP`` (up to ``MAX_REPLAY``) while a mastered
level has slipped (``slipped``: below the promoted checkpoint by more than the promotion tolerance at its last
evaluation; unknown counts as slipped), and under ``equal``/``catch_up`` with another open skill it rests the
skill for ``REST_TURNS`` generated files so the others train. A new best resets the boost and the rest but keeps
the lowered learning rate (what found the new best); an advance resets all three, so a new level starts at the
full rate (recorded too). Files without these keys (written before plateaus existed) load as they are.

Plain functions over plain dicts, written atomically; no Prefect, no torch. ``load`` checks the file before
anything uses it (a regular file, not too big, JSON, the shape above) and names it in every error; skills sit
below dojo in the layers, so this is a local check rather than ``dojo.storage.read_json``.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import random
import stat
from pathlib import Path

from skills import SKILLS

WINDOW = 3
THRESHOLD = 0.80
STRATEGIES = ("equal", "focus", "weighted", "catch_up")
MAX_STATE_BYTES = 64 << 20      # as dojo.storage.MAX_STATE_BYTES
REPLAY_STEP = 0.1               # replay share added per plateau
MAX_REPLAY = 0.5                # replay share never exceeds this: the training level keeps half of each file
REST_TURNS = 2                  # generated files a plateaued skill sits out (equal / catch_up, >1 open skill)
MIN_LR_SCALE = 0.125            # a plateau never takes the learning rate below 1/8 of train.learning_rate


def state_path(root: Path) -> Path:
    return Path(root) / "state" / "curriculum.json"


def new_state(skills: list[str]) -> dict:
    unknown = [s for s in skills if s not in SKILLS]
    if unknown:
        raise ValueError(f"unknown skill(s) {unknown}; known: {', '.join(SKILLS)}")
    return {"version": 1, "turn": 0,
            "skills": {s: {"level": 0, "history": [], "advanced_at": []} for s in skills}}


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_accuracy(value) -> bool:
    # NaN would compare False against the threshold and advance the skill
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def _shape_problem(state) -> str | None:
    """What is wrong with the shape of a parsed curriculum state, or None."""
    if not isinstance(state, dict):
        return f"must be a JSON object, not {type(state).__name__}"
    if "turn" in state and not _is_count(state["turn"]):
        return "has a 'turn' that is not an integer >= 0"
    if not isinstance(state.get("skills"), dict):
        return "has no 'skills' mapping"
    for skill, s in state["skills"].items():
        if skill not in SKILLS:
            return f"names the unknown skill {skill[:80]!r} (known: {', '.join(SKILLS)})"
        if not isinstance(s, dict) or not _is_count(s.get("level")):
            return f"skill {skill!r}: 'level' must be an integer >= 0"
        history = s.get("history")
        if not isinstance(history, list) or not all(
                isinstance(h, dict) and _is_count(h.get("level")) and _is_accuracy(h.get("accuracy"))
                for h in history):
            return f"skill {skill!r}: 'history' must be a list of evaluations with a level and an accuracy in [0, 1]"
        if not isinstance(s.get("advanced_at"), list) or not all(_is_count(i) for i in s["advanced_at"]):
            return f"skill {skill!r}: 'advanced_at' must be a list of integers >= 0"
        p = s.get("plateau", {})      # optional: files written before plateaus existed have none
        good = isinstance(p, dict) and (p.get("best") is None or _is_accuracy(p["best"])) and all(
            _is_count(p.get(k, 0)) for k in ("since_best", "rest")) and _is_accuracy(p.get("replay_boost", 0.0))
        slipped = p.get("slipped") if isinstance(p, dict) else None
        good = good and (slipped is None or isinstance(slipped, list) and all(_is_count(x) for x in slipped))
        if not good or not _is_accuracy(p.get("lr_scale", 1.0)) or not p.get("lr_scale", 1.0) > 0:
            return (f"skill {skill!r}: 'plateau' must hold best (an accuracy or null), since_best and rest (integers "
                    f">= 0), replay_boost (in [0, 1]), lr_scale (in (0, 1]) and slipped (null or a list of levels)")
        if not isinstance(s.get("plateau_actions", []), list):
            return f"skill {skill!r}: 'plateau_actions' must be a list"
    return None


def _read(path: Path) -> dict | None:
    """The parsed state file, None when there is none; ValueError naming the file for anything unusable."""
    fix = "fix it, or move it away to restart the curriculum from level 0"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"{path}: the curriculum state cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):           # a FIFO is never opened, so nothing hangs
        raise ValueError(f"{path}: the curriculum state is not a regular file; {fix}")
    if st.st_size > MAX_STATE_BYTES:
        raise ValueError(f"{path}: the curriculum state is {st.st_size} bytes, more than the {MAX_STATE_BYTES} "
                         f"allowed; {fix}")
    try:
        with open(path, "rb") as f:
            state = json.loads(f.read(MAX_STATE_BYTES + 1).decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: the curriculum state is not UTF-8 text; {fix}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: the curriculum state is not valid JSON ({exc.msg} at line {exc.lineno} column "
                         f"{exc.colno}); {fix}") from None
    except RecursionError:
        raise ValueError(f"{path}: the curriculum state is nested too deeply; {fix}") from None
    except OSError as exc:
        raise ValueError(f"{path}: the curriculum state cannot be read ({exc.strerror})") from None
    problem = _shape_problem(state)
    if problem:
        raise ValueError(f"{path}: the curriculum state {problem}; {fix}")
    return state


def load(root: Path, skills: list[str]) -> dict:
    """The curriculum state, created for ``skills`` when missing; skills added to config are added here.
    ValueError naming ``state/curriculum.json`` when the file is not a usable state."""
    state = _read(state_path(root))
    if state is None:
        state = new_state(skills)
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


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def plateau(state: dict, skill: str) -> dict:
    """The skill's plateau record (created with its defaults for a state written before plateaus existed)."""
    p = state["skills"][skill].setdefault("plateau", {})
    for key, value in (("best", None), ("since_best", 0), ("replay_boost", 0.0), ("rest", 0), ("lr_scale", 1.0),
                       ("slipped", None)):
        p.setdefault(key, value)
    state["skills"][skill].setdefault("plateau_actions", [])
    return p


def _reset_plateau(state: dict, skill: str, level: int, checkpoint: str, why: str, best, advanced: bool) -> None:
    """Clear the replay boost and the rest; on an advance also the learning-rate scale (a new level starts at the
    full rate; a new best at the same level keeps the rate that found it)."""
    p = plateau(state, skill)
    lr_reset = advanced and p["lr_scale"] != 1.0
    if p["replay_boost"] or p["rest"] or lr_reset:
        cleared = f"replay boost {p['replay_boost']:.2f} and rest {p['rest']} cleared"
        state["skills"][skill]["plateau_actions"].append({
            "time": _now(), "level": level, "checkpoint": checkpoint, "action": "reset",
            "reason": f"{why}: {cleared}" + (f"; learning rate back to 1.00 from {p['lr_scale']:.3f} of "
                                             f"train.learning_rate" if lr_reset else "")})
    p.update(best=best, since_best=0, replay_boost=0.0, rest=0)
    if advanced:
        p.update(lr_scale=1.0, slipped=None)    # the new mastered level has not been compared yet


def _on_plateau(state: dict, skill: str, level: int, checkpoint: str, evals: int, can_switch: bool,
                lr_factor: float = 1.0) -> dict:
    """Act on a plateau at ``level``: lower the learning rate (``lr_factor`` < 1, down to ``MIN_LR_SCALE``),
    raise replay when a mastered level has slipped (or when that is not known yet), rest the skill when another
    can train; record the action and its reason."""
    p = plateau(state, skill)
    done, why = [], f"{evals} evaluations at level {level} without beating the best {p['best']:.3f}"
    if lr_factor < 1.0 and p["lr_scale"] > MIN_LR_SCALE:
        p["lr_scale"] = round(max(MIN_LR_SCALE, p["lr_scale"] * lr_factor), 6)
        done.append(f"learning rate x{lr_factor:g} to {p['lr_scale']:.3f} of train.learning_rate")
    slipping = p["slipped"] is None or bool(p["slipped"])     # None: no mastered level compared yet
    if level > 1 and slipping and p["replay_boost"] < MAX_REPLAY:
        p["replay_boost"] = round(min(MAX_REPLAY, p["replay_boost"] + REPLAY_STEP), 6)
        done.append(f"replay boost +{REPLAY_STEP} to {p['replay_boost']:.2f}"
                    + (f" (mastered level(s) {p['slipped']} slipped)" if p["slipped"] else ""))
    elif level > 1 and not slipping:
        why += "; replay not raised: no mastered level has slipped"
    if can_switch:
        p["rest"] = REST_TURNS
        done.append(f"switch: rest {skill} for {REST_TURNS} generated files")
    action = {"time": _now(), "level": level, "checkpoint": checkpoint,
              "action": "; ".join(done) or "none",
              "reason": why if done else (f"{why}; nothing to change (learning rate at its floor or not lowered, "
                                          f"no mastered level to replay, and no other skill to switch to under "
                                          f"this strategy)")}
    state["skills"][skill]["plateau_actions"].append(action)
    p["since_best"] = 0
    return action


def record_eval(state: dict, skill: str, level: int, accuracy: float, checkpoint: str, step: int,
                window: int = WINDOW, threshold: float = THRESHOLD, plateau_evals: int = 0,
                can_switch: bool = False, lr_factor: float = 1.0, slipped: list[int] | None = None) -> dict | None:
    """Append an evaluation at the training level; advance when the window's mean clears the threshold.

    Evaluations at other levels are not history for advancement (they are regression checks). Returns the
    advance record ``{skill, from_level, to_level, mean, checkpoint}`` when the skill advanced, else None.
    ``plateau_evals`` > 0: after that many evaluations in a row without a new best at the training level, act
    (``_on_plateau``; ``can_switch`` when the strategy may rest this skill for another; ``lr_factor`` < 1 lowers
    its learning rate); a new best resets the boost and the rest, an advance everything. ``slipped``: the
    mastered levels this evaluation found below the promoted checkpoint by more than the tolerance
    (``dojo.promotion.slipped``; None when no mastered level was evaluated, which keeps the last known list): a
    plateau raises replay only while one has slipped, since replay does nothing for a level that holds.
    """
    s = state["skills"][skill]
    if level != training_level(state, skill):
        return None
    s["history"].append({"level": level, "accuracy": accuracy, "checkpoint": checkpoint, "step": step,
                         "time": _now()})
    p = plateau(state, skill)
    if slipped is not None:
        p["slipped"] = sorted(slipped)
    if p["best"] is None or accuracy > p["best"]:
        if p["best"] is not None:
            _reset_plateau(state, skill, level, checkpoint, f"improved to {accuracy:.3f} from {p['best']:.3f}",
                           accuracy, advanced=False)
        p["best"], p["since_best"] = accuracy, 0
    else:
        p["since_best"] += 1
        if plateau_evals and p["since_best"] >= plateau_evals:
            _on_plateau(state, skill, level, checkpoint, p["since_best"], can_switch, lr_factor)
    since = s["advanced_at"][-1] if s["advanced_at"] else 0
    recent = [h["accuracy"] for h in s["history"][since:] if h["level"] == level][-window:]
    # 1e-9: a mean of exactly the threshold (e.g. .5 .95 .95) must not fail on float rounding
    if len(recent) < window or sum(recent) / window < threshold - 1e-9 or s["level"] >= max(SKILLS[skill].LEVELS):
        return None
    s["level"] = level
    s["advanced_at"].append(len(s["history"]))
    _reset_plateau(state, skill, level, checkpoint, f"advanced past level {level}", None, advanced=True)
    return {"skill": skill, "from_level": level, "to_level": training_level(state, skill),
            "mean": sum(recent) / window, "checkpoint": checkpoint}


def replay_plan(state: dict, skill: str, base_share: float) -> tuple[list[int], float]:
    """(mastered levels to replay, share of a file drawn from them): ``base_share`` (curriculum.replay_share)
    plus the plateau boost, at most ``MAX_REPLAY``; nothing when no level below the training level is mastered."""
    levels = list(range(1, training_level(state, skill)))
    if not levels:
        return [], 0.0
    boost = state["skills"][skill].get("plateau", {}).get("replay_boost", 0.0)
    return levels, min(MAX_REPLAY, max(base_share, 0.0) + boost)


def lr_scale(state: dict, skill: str) -> float:
    """The share of ``train.learning_rate`` the skill's curriculum files train at (plateaus lower it)."""
    return float(state["skills"].get(skill, {}).get("plateau", {}).get("lr_scale", 1.0))


def mastered(state: dict, skill: str) -> bool:
    return state["skills"][skill]["level"] >= max(SKILLS[skill].LEVELS)


def choose_skill(state: dict, strategy: str, priority: list[str], weights: dict[str, float] | None = None,
                 seed: int = 0) -> str:
    """Pick the skill to generate data for next (advances the round-robin turn)."""
    skills = [s for s in priority if s in state["skills"]]
    if not skills:
        raise ValueError("the curriculum has no skills configured")
    open_skills = [s for s in skills if not mastered(state, s)] or skills
    resting = [s for s in open_skills if state["skills"][s].get("plateau", {}).get("rest", 0) > 0]
    if resting and len(resting) < len(open_skills):     # a plateaued skill sits out while another can train
        for s in resting:
            state["skills"][s]["plateau"]["rest"] -= 1
        open_skills = [s for s in open_skills if s not in resting]
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
