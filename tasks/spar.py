"""Prefect tasks of sparring: thin adapters over ``dojo.gpu_gate`` (the GPU-idle gate) and ``dojo.spar`` adding
the log lines and the artifacts a user watches (``gpu-gate``: how long the job waited for an idle GPU and why;
``spar``: what was asked, missed and queued)."""
from __future__ import annotations

from dataclasses import asdict

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from dojo import gpu_gate
from dojo import spar as sparring

OPTS = {"cache_policy": NO_CACHE, "persist_result": False}


@task(**OPTS)
def wait_for_idle_gpu(cfg, probe=None) -> dict:
    """Block until the eval GPU is idle enough (a log line per wait); fail with the reason after the timeout.
    ``probe``: the GPU reader (default NVML; tests inject one)."""
    logger = get_run_logger()
    try:
        result = gpu_gate.wait_until_idle(cfg, probe or gpu_gate.nvml_probe, on_wait=logger.info)
    except gpu_gate.GpuBusy as exc:
        create_markdown_artifact(key="gpu-gate", markdown=f"# GPU-idle gate: gave up\n\n{exc}\n")
        logger.error("GPU-idle gate: %s", exc)
        raise
    create_markdown_artifact(key="gpu-gate", markdown=(
        f"# GPU-idle gate: passed\n\n{result.message}\n\nwaited {result.waited_seconds:.0f}s, "
        f"{result.waits} busy verdict(s) before it\n"))
    logger.info("GPU-idle gate: %s", result.message)
    return asdict(result)


@task(**OPTS)
def spar(cfg, checkpoint: str, skill: str | None = None, level: int | None = None,
         problems: int | None = None) -> dict:
    out = sparring.spar(cfg, checkpoint, skill, level, problems)
    logger = get_run_logger()
    (logger.info if out["accepted"] or not out["missed"] else logger.warning)("%s", out["message"])
    create_table_artifact(key="spar", table=[{"field": k, "value": str(out.get(k))} for k in (
        "checkpoint", "step", "skill", "level", "seed", "asked", "missed", "examples", "queued_id", "accepted",
        "eval_overlap", "message")], description=f"Sparring with {out['checkpoint']}")
    return out
