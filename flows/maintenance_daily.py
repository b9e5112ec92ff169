"""maintenance/daily — once a day on the eval pool: retention (``dojo.maintenance``): remove what the
``retention`` config lets go, never the promoted or a best checkpoint; artifacts: usage per folder and what went."""
from prefect import flow

from flows import load_config
from tasks import pipeline as t


@flow(name="maintenance", log_prints=True)
def daily(apply: bool = True, config: str | None = None) -> dict:
    return t.maintenance(load_config(config), apply)
