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

from dojo.storage import StateError, read_json, read_jsonl, write_json

TOLERANCE = 0.05
POINTERS = ("state/promoted.json", "state/promotions.jsonl")   # what a decision changes (mirror.shared_file)


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


def is_score(value) -> bool:
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
            isinstance(by_level, dict) and all(isinstance(k, str) and is_score(v) for k, v in by_level.items())
            for by_level in scores.values()):
        raise StateError(f"{path}: the promotion pointer's eval must map skill -> level -> accuracy (a number "
                         f"in [0, 1]); {fix}")
    return pointer


def slipped(scores: dict[str, float], promoted: dict | None, skill: str, mastered_levels: list[int],
            tolerance: float = TOLERANCE) -> dict[int, tuple[float, float]]:
    """Mastered levels on which ``scores`` fall more than ``tolerance`` below the promoted checkpoint's:
    level -> (score, promoted score). The regression guard refuses such a candidate; the curriculum replays
    mastered levels on a plateau only while one has slipped. Levels not in ``scores`` are not judged."""
    old = (promoted or {}).get("eval", {}).get(skill, {})
    return {level: (scores[str(level)], old[str(level)]) for level in mastered_levels
            if str(level) in old and str(level) in scores and scores[str(level)] < old[str(level)] - tolerance}


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
    drops = slipped(scores, promoted, skill, mastered_levels, tolerance)
    if drops:
        level, (score, before) = next(iter(drops.items()))
        return Decision(False, candidate, previous, skill, training_level,
                        f"regression on mastered level {level}: {score:.3f} vs {before:.3f} (tolerance {tolerance})")
    beat = old.get(key)
    return Decision(True, candidate, previous, skill, training_level,
                    f"level {training_level}: {scores[key]:.3f} beats the promoted "
                    f"{'n/a' if beat is None else f'{beat:.3f}'}; no mastered level dropped by more than {tolerance}")


def apply(root: Path, decision: Decision, checkpoint_path: str, eval_scores: dict, by: str = "evaluation") -> None:
    """Record the decision (``by``: evaluation, or by hand); when it promotes, replace ``promoted.json``
    atomically (one rename). Callers hold ``mirror.shared_file(cfg, *POINTERS)`` from reading the pointer they
    decided against until this returns, so two deciders cannot both promote against the same old pointer."""
    state = Path(root) / "state"
    state.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    with open(state / "promotions.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({**asdict(decision), "time": now, "by": by}) + "\n")
    if not decision.promote:
        return
    pointer = {"checkpoint": decision.candidate, "path": checkpoint_path, "eval": eval_scores,
               "reason": decision.reason, "time": now, "previous": decision.previous, "by": by}
    write_json(promoted_path(root), pointer)


def history(root: Path) -> list[dict]:
    """Every recorded decision, oldest first (``state/promotions.jsonl``); a line that is not a JSON object
    (a torn write, an edit) is skipped, not fatal."""
    return read_jsonl(Path(root) / "state" / "promotions.jsonl")


def promote_by_hand(cfg, checkpoint: Path, reason: str) -> Decision:
    """Point ``promoted.json`` at ``checkpoint`` — a promotion or a rollback chosen by a person — through the
    same locked, atomic pointer update evaluation uses, recorded in the history with ``reason`` and
    ``by: hand``. The pointer carries the checkpoint's own eval scores from its ledger, so the loop's next
    candidate has to beat *this* checkpoint. The caller verifies the checkpoint first."""
    from dojo import mirror
    from model.checkpoint import read_ledger

    checkpoint = Path(checkpoint)
    if not reason.strip():
        raise ValueError("--reason: say why (it is recorded in state/promotions.jsonl)")
    ledger = read_ledger(checkpoint)
    scores = ledger.get("eval") if isinstance(ledger.get("eval"), dict) else {}
    scores = {skill: {lv: acc for lv, acc in by_level.items() if is_score(acc)}
              for skill, by_level in scores.items() if isinstance(by_level, dict)}
    root = cfg.root
    with mirror.shared_file(cfg, *POINTERS):
        old = current(root)
        previous = old["checkpoint"] if old else None
        if previous == checkpoint.name:
            raise ValueError(f"{checkpoint.name} is already the promoted checkpoint")
        level = ledger.get("level") if type(ledger.get("level")) is int else 0
        decision = Decision(True, checkpoint.name, previous, str(ledger.get("skill") or ""), level,
                            f"by hand: {reason.strip()}")
        apply(root, decision, str(checkpoint.resolve()), scores, by="hand")
    return decision
