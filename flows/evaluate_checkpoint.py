"""evaluate/checkpoint — on the eval pool: score a checkpoint on every level up to its skill's training level,
record curriculum progress (advance on the mean of the last evals), and promote it when it beats the promoted
checkpoint without regressing a mastered level. Artifacts: eval table, promotion decision, curriculum state."""
from prefect import flow

from flows import load_config
from tasks import pipeline as t


@flow(name="evaluate", log_prints=True)
def checkpoint(checkpoint: str, config: str | None = None) -> dict:
    return t.evaluate_and_promote(load_config(config), checkpoint)
