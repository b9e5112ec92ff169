"""Experiment trackers (``train.report_to``) through accelerate's tracker classes: TensorBoard, W&B, MLflow, …

One run per lineage: a storage root is one lineage (``model/train.py`` refuses to mix base models in it), so the
run is named after the root (``lineage_run_name``) and every chunk and every evaluation of that root logs into it
at the global step:

* per step (every ``train.log_every``): ``train/loss``, ``train/lr``, ``train/tokens_per_s``;
* per chunk: ``chunk/train_loss``, ``chunk/val_loss``, ``chunk/tokens_per_s``, ``chunk/examples``;
* per evaluation (the evaluate/checkpoint task): ``eval/{skill}/level_{n}`` accuracy, ``promotion/promoted``
  (1 or 0), ``curriculum/{skill}_level`` on an advance, and the decision as text.

TensorBoard writes ``{root}/trackers/{run}/`` (``tensorboard --logdir {root}/trackers``); each process adds its
own event file to that one run directory. W&B resumes the run by id (``resume="allow"``; offline with
``WANDB_MODE=offline``). MLflow logs into an experiment named after the run, one MLflow run per chunk or
evaluation. The tracker packages are optional: naming one that is not installed is refused with what to install.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
from pathlib import Path

from dojo.config import report_to_names

log = logging.getLogger("dojo.trackers")



def lineage_run_name(root: Path) -> str:
    """The one run name of a storage root's lineage: its folder name and a hash of its path."""
    root = Path(root).resolve()
    return f"dojo-{root.name}-{hashlib.sha256(str(root).encode()).hexdigest()[:8]}"


def logging_dir(root: Path) -> Path:
    return Path(root) / "trackers"


class Run:
    """The open trackers of one lineage; ``log`` sends scalars (and text) to each at a global step."""

    def __init__(self, trackers: list):
        self.trackers = trackers

    def log(self, values: dict, step: int) -> None:
        values = {k: v for k, v in values.items() if v is not None}
        for tracker in self.trackers:
            try:
                tracker.log(values, step=step)
            except Exception as exc:  # noqa: BLE001 - a tracker's outage never stops training
                log.warning("tracker %s failed to log at step %d: %s", tracker.name, step, exc)

    def finish(self) -> None:
        for tracker in self.trackers:
            try:
                tracker.finish()
            except Exception as exc:  # noqa: BLE001
                log.warning("tracker %s failed to finish: %s", tracker.name, exc)


def open_run(cfg) -> Run | None:
    """The lineage's run on every tracker in ``train.report_to``; None for ``none``. Refuses a tracker whose
    package is missing (accelerate would silently skip it)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    names = report_to_names(cfg.train.report_to)
    if not names:
        return None
    missing = [n for n in names if importlib.util.find_spec(n) is None]   # each tracker's package has its name
    if missing:
        raise ValueError(f"config train.report_to: {', '.join(missing)} is not installed; pip install "
                         f"{' '.join(missing)}, or remove it from train.report_to")
    run_name, folder = lineage_run_name(cfg.root), logging_dir(cfg.root)
    folder.mkdir(parents=True, exist_ok=True)
    extra = {"wandb": {"name": run_name, "id": run_name, "resume": "allow", "dir": str(folder)},
             "mlflow": {"run_name": run_name}}
    trackers = []
    for name in names:
        cls = LOGGER_TYPE_TO_CLASS[name]
        # as accelerate.Accelerator.init_trackers builds them: project name first, the logging dir when needed
        tracker = (cls(run_name, str(folder), **extra.get(name, {})) if cls.requires_logging_directory
                   else cls(run_name, **extra.get(name, {})))
        tracker.start()
        trackers.append(tracker)
    return Run(trackers)


@contextlib.contextmanager
def lineage_run(cfg):
    """``open_run`` as a context manager (yields None for ``none``); the trackers are finished on the way out."""
    run = open_run(cfg)
    try:
        yield run
    finally:
        if run is not None:
            run.finish()


def step_values(progress: dict) -> dict:
    """The per-step scalars of a training progress record (``model.train`` ``on_progress``)."""
    return {"train/loss": progress.get("loss"), "train/lr": progress.get("lr"),
            "train/tokens_per_s": progress.get("tokens_per_s")}


def chunk_values(result) -> dict:
    """The per-chunk scalars of a ``model.train.ChunkResult``."""
    return {"chunk/train_loss": result.train_loss, "chunk/val_loss": result.val_loss,
            "chunk/tokens_per_s": result.tokens_trained / max(result.seconds, 1e-9),
            "chunk/examples": result.examples_trained}


def log_evaluation(cfg, outcome: dict) -> None:
    """Log what ``dojo.steps.evaluate_and_promote`` returned: accuracy per level, the promotion decision and any
    level advance, at the checkpoint's step. Nothing happens for ``train.report_to: none``."""
    with lineage_run(cfg) as run:
        if run is None:
            return
        skill = outcome["skill"]
        values = {f"eval/{skill}/level_{level}": r["accuracy"] for level, r in outcome["levels"].items()}
        values["promotion/promoted"] = 1.0 if outcome["promoted"] else 0.0
        values["promotion/decision"] = f"{outcome['checkpoint']}: {outcome['reason']}"
        if outcome.get("advance"):
            values[f"curriculum/{skill}_level"] = float(outcome["advance"]["from_level"])
        run.log(values, step=outcome["step"])
