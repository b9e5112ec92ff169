"""Promotion: which checkpoint is "the model", changed by one atomic pointer update with its reason.

``state/promoted.json`` holds the promoted checkpoint's name, its eval accuracies and why it was promoted;
``state/promotions.jsonl`` keeps every decision (promoted or not) so the history is auditable. A candidate
is promoted when there is no promoted checkpoint yet, or when it beats the promoted one on the training level
and drops no mastered level by more than ``tolerance``.

``promoted.json`` is read through ``storage.read_json`` and its shape checked (``current``): a pointer that is
not what ``apply`` writes is an error naming the file, never a traceback halfway through a decision.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from dojo.storage import StateError, read_json, write_json

TOLERANCE = 0.05


@dataclass(frozen=True)
class Decision:
    promote: bool
    candidate: str
    previous: str | None
    skill: str
    training_level: int
    reason: str

    def markdown(self) -> str:
        verdict = "**Promoted**" if self.promote else "**Not promoted**"
        return (f"# Promotion decision: {self.candidate}\n\n{verdict}. {self.reason}\n\n"
                f"- skill: `{self.skill}`, training level {self.training_level}\n"
                f"- previously promoted: `{self.previous or 'none'}`\n")


def promoted_path(root: Path) -> Path:
    return Path(root) / "state" / "promoted.json"


def _is_score(value) -> bool:
    # an accuracy in [0, 1]; NaN is not (every comparison with it is False, which would promote)
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def current(root: Path) -> dict | None:
    """The promotion pointer, or None when nothing was promoted yet. StateError naming the file when it is not
    a JSON object with a ``checkpoint`` name and ``eval`` scores {skill: {level: accuracy}}."""
    path = promoted_path(root)
    pointer = read_json(path, expect=dict, what="promotion pointer")
    if pointer is None:
        return None
    fix = "fix it, or move it away so that the next evaluated checkpoint is promoted afresh"
    if not isinstance(pointer.get("checkpoint"), str) or not pointer["checkpoint"]:
        raise StateError(f"{path}: the promotion pointer has no checkpoint name (a non-empty string); {fix}")
    scores = pointer.get("eval", {})
    if not isinstance(scores, dict) or not all(
            isinstance(by_level, dict) and all(isinstance(k, str) and _is_score(v) for k, v in by_level.items())
            for by_level in scores.values()):
        raise StateError(f"{path}: the promotion pointer's eval must map skill -> level -> accuracy (a number "
                         f"in [0, 1]); {fix}")
    return pointer


def decide(candidate: str, scores: dict[str, float], promoted: dict | None, skill: str, training_level: int,
           mastered_levels: list[int], tolerance: float = TOLERANCE) -> Decision:
    """``scores`` maps level (as str) -> accuracy for the candidate on ``skill``."""
    key = str(training_level)
    if key not in scores:
        return Decision(False, candidate, None, skill, training_level,
                        f"the candidate was not evaluated at the training level {training_level}")
    if promoted is None:
        return Decision(True, candidate, None, skill, training_level,
                        f"first promotion: {scores[key]:.3f} at level {training_level}")
    old = promoted.get("eval", {}).get(skill, {})
    previous = promoted["checkpoint"]
    if scores[key] <= old.get(key, -1.0):
        return Decision(False, candidate, previous, skill, training_level,
                        f"level {training_level}: {scores[key]:.3f} does not beat the promoted {old.get(key, 0):.3f}")
    for level in mastered_levels:
        lk = str(level)
        if lk in old and lk in scores and scores[lk] < old[lk] - tolerance:
            return Decision(False, candidate, previous, skill, training_level,
                            f"regression on mastered level {level}: {scores[lk]:.3f} vs {old[lk]:.3f} "
                            f"(tolerance {tolerance})")
    beat = old.get(key)
    return Decision(True, candidate, previous, skill, training_level,
                    f"level {training_level}: {scores[key]:.3f} beats the promoted "
                    f"{'n/a' if beat is None else f'{beat:.3f}'}; no mastered level dropped by more than {tolerance}")


def apply(root: Path, decision: Decision, checkpoint_path: str, eval_scores: dict) -> None:
    """Record the decision; when it promotes, replace ``promoted.json`` atomically (one rename)."""
    state = Path(root) / "state"
    state.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    with open(state / "promotions.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({**asdict(decision), "time": now}) + "\n")
    if not decision.promote:
        return
    pointer = {"checkpoint": decision.candidate, "path": checkpoint_path, "eval": eval_scores,
               "reason": decision.reason, "time": now, "previous": decision.previous}
    write_json(promoted_path(root), pointer)
