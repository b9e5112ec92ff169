"""Prefect flows: wiring only (which task, in what order, on which pool). Deployments: prefect.yaml."""
import os

from dojo import config as _config


def load_config(path: str | None):
    """The flows' config: the ``config`` parameter, else $DOJO_CONFIG, else ./dojo.yaml (the repo root, where
    the workers run), else defaults."""
    from dojo.storage import apply_umask

    cfg = _config.load(path or os.environ.get("DOJO_CONFIG"))
    apply_umask(cfg)                   # what the runs write under the root stays private (storage.umask)
    return cfg
