"""The Oracle: ``dojo serve``, an OpenAI-compatible chat server for any dojo checkpoint, and a learning-curve page.

``auth`` (the API key), ``models`` (model ids → checkpoints, the models kept loaded), ``app`` (the routes and the
server), ``page`` (the SVG learning curves). ``docs/serving.md`` is the user's guide.
"""
from __future__ import annotations


def url(cfg) -> str:
    """Where the configured Oracle's page is (``serve.host``/``serve.port``)."""
    host = cfg.serve.host
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{f'[{shown}]' if ':' in shown else shown}:{cfg.serve.port}/"
