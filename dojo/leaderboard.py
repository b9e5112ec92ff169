"""The leaderboard: one row per evaluated checkpoint in ``state/leaderboard.jsonl``, ranked; regressions against
the best checkpoint on each mastered level; the overfitting warning.

A row holds the checkpoint, its step and time, its skill and training level, accuracy per skill and level (the
levels evaluated; ``skipped`` lists mastered levels not evaluated this time, see ``eval.mastered_every``),
whether it was promoted, train and validation loss, and the transfer-probe score with its delta against the
base model when it was measured (promoted checkpoints).

Ranking (``ranked``): a checkpoint trained at a higher level ranks above one at a lower level; within a level,
higher accuracy at its training level ranks above, then the mean over the levels it was evaluated on, then the
newer step. A **regression** (``regressions``) is a mastered level on which a checkpoint scores more than the
tolerance below the best score any earlier checkpoint had on that level. **Overfitting** (``overfitting``):
the gap ``val_loss - train_loss`` widened on each of the last 3 checkpoints that have both losses and is now
above ``eval.overfit_gap``.

Rows are appended under ``mirror.shared_file`` (the lock beside the file; lease and compare-and-swap on a URL
root). Reading skips a line that is not a JSON object (a torn write) rather than failing. No Prefect here:
``tasks.pipeline.evaluate_and_promote`` turns regressions into events and artifacts.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from dojo.storage import read_jsonl

REL = "state/leaderboard.jsonl"
GAP_WINDOW = 3


def path(root: Path) -> Path:
    return Path(root) / REL


def load(root: Path) -> list[dict]:
    """Every row, oldest first."""
    return [row for row in read_jsonl(path(root))
            if isinstance(row.get("checkpoint"), str) and isinstance(row.get("accuracy"), dict)]


def append(root: Path, row: dict) -> None:
    """Append one row (callers hold ``mirror.shared_file(cfg, REL)``)."""
    p = path(root)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def make_row(checkpoint: str, step: int, skill: str, training_level: int, scores: dict[str, float],
             skipped: list[int], promoted: bool, train_loss, val_loss, probe: dict | None = None) -> dict:
    return {"checkpoint": checkpoint, "step": step,
            "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "skill": skill, "training_level": training_level, "accuracy": {skill: dict(scores)},
            "skipped": {skill: list(skipped)}, "promoted": promoted, "train_loss": train_loss, "val_loss": val_loss,
            "probe": probe}


def best(rows: list[dict], skill: str, level: int) -> tuple[float, str] | None:
    """(best accuracy, checkpoint) on ``skill`` at ``level`` over ``rows``, or None when none was evaluated there."""
    found = [(r["accuracy"][skill][str(level)], r["checkpoint"]) for r in rows
             if isinstance(r["accuracy"].get(skill), dict) and isinstance(r["accuracy"][skill].get(str(level)),
                                                                           (int, float))]
    return max(found, key=lambda x: x[0]) if found else None


def regressions(rows: list[dict], skill: str, scores: dict[str, float], mastered_levels: list[int],
                tolerance: float) -> list[dict]:
    """Mastered levels where ``scores`` fall more than ``tolerance`` below the best earlier checkpoint (``rows``)."""
    out = []
    for level in mastered_levels:
        got, top = scores.get(str(level)), best(rows, skill, level)
        if got is None or top is None or got >= top[0] - tolerance:
            continue
        out.append({"skill": skill, "level": level, "best": top[0], "best_checkpoint": top[1], "accuracy": got,
                    "drop": round(top[0] - got, 6), "tolerance": tolerance})
    return out


def _rank_key(row: dict):
    skill = row.get("skill")
    scores = row["accuracy"].get(skill, {}) if isinstance(row["accuracy"].get(skill), dict) else {}
    at_level = scores.get(str(row.get("training_level")), 0.0)
    mean = sum(scores.values()) / len(scores) if scores else 0.0
    return (row.get("training_level") or 0, at_level, mean, row.get("step") or 0)


def ranked(rows: list[dict], skill: str | None = None, top: int | None = None) -> list[dict]:
    """Rows (of ``skill`` when given), best first (module doc), at most ``top``."""
    rows = [r for r in rows if skill is None or r.get("skill") == skill]
    rows = sorted(rows, key=_rank_key, reverse=True)
    return rows[:top] if top else rows


def overfitting(rows: list[dict], gap: float) -> str | None:
    """A warning when val - train loss widened on each of the last GAP_WINDOW rows with both and exceeds ``gap``."""
    gaps = [(r["checkpoint"], r["val_loss"] - r["train_loss"]) for r in rows
            if isinstance(r.get("val_loss"), (int, float)) and isinstance(r.get("train_loss"), (int, float))]
    last = gaps[-GAP_WINDOW:]
    if len(last) < GAP_WINDOW or last[-1][1] <= gap or not all(b[1] > a[1] for a, b in zip(last, last[1:])):
        return None
    return (f"possible overfitting: validation minus training loss grew over the last {GAP_WINDOW} checkpoints "
            f"({', '.join(f'{g:.3f}' for _, g in last)}) and exceeds eval.overfit_gap {gap} at {last[-1][0]}")


def table_rows(rows: list[dict]) -> list[dict]:
    """Flat rows for a table artifact or the CLI, in the order given (rank 1 first)."""
    out = []
    for rank, r in enumerate(rows, 1):
        skill = r.get("skill")
        scores = r["accuracy"].get(skill, {})
        probe = r.get("probe") or {}
        out.append({
            "rank": rank, "checkpoint": r["checkpoint"], "step": r.get("step"), "skill": skill,
            "level": r.get("training_level"),
            "accuracy": " ".join(f"L{lv}={a:.3f}" for lv, a in sorted(scores.items(), key=lambda x: int(x[0]))),
            "skipped": ",".join(map(str, r.get("skipped", {}).get(skill, []))) or "-",
            "promoted": "yes" if r.get("promoted") else "no",
            "probe": "-" if "score" not in probe else
                     f"{probe['score']:.3f} ({probe['delta']:+.3f} vs base)" if probe.get("delta") is not None
                     else f"{probe['score']:.3f}",
            "train_loss": _loss(r.get("train_loss")), "val_loss": _loss(r.get("val_loss")),
            "time": r.get("time"),
        })
    return out


def _loss(x) -> str:
    return f"{x:.4f}" if isinstance(x, (int, float)) else "-"


def format_table(rows: list[dict]) -> str:
    """A plain-text table for ``dojo leaderboard``."""
    flat = table_rows(rows)
    if not flat:
        return "no evaluated checkpoints yet (state/leaderboard.jsonl is empty)"
    cols = ["rank", "checkpoint", "step", "skill", "level", "accuracy", "skipped", "promoted", "probe",
            "train_loss", "val_loss"]
    width = {c: max(len(c), *(len(str(r[c])) for r in flat)) for c in cols}
    lines = ["  ".join(c.ljust(width[c]) for c in cols)]
    lines += ["  ".join(str(r[c]).ljust(width[c]) for c in cols) for r in flat]
    return "\n".join(line.rstrip() for line in lines)


def regression_markdown(checkpoint: str, found: list[dict]) -> str:
    lines = [f"# Regression: {checkpoint}\n", "| skill | level | this checkpoint | best | best checkpoint | drop |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['skill']} | {r['level']} | {r['accuracy']:.3f} | {r['best']:.3f} | `{r['best_checkpoint']}` | "
              f"{r['drop']:.3f} (tolerance {r['tolerance']}) |" for r in found]
    return "\n".join(lines) + "\n"
