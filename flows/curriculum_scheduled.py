"""curriculum/scheduled — on a schedule: choose a skill by the curriculum strategy, generate a file at its
training level, gate it and queue it."""
from prefect import flow

from flows import load_config
from tasks import pipeline as t


@flow(name="curriculum", log_prints=True)
def scheduled(count: int = 0, config: str | None = None) -> str:
    return t.generate_curriculum_file(load_config(config), count or None)
