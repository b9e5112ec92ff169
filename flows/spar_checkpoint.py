"""spar/checkpoint — on the eval pool, started by evaluate/checkpoint without waiting (``spar.after``): one
background job per eval GPU (a Prefect global concurrency limit per GPU, created by ``dojo up``), which starts
only when that GPU is idle enough (the GPU-idle gate), then asks the checkpoint fresh problems at its training
level and queues every wrong answer as three examples at high priority. Artifacts: gpu-gate, spar."""
from prefect import flow
from prefect.concurrency.sync import concurrency

from dojo import gpu_gate
from flows import load_config
from tasks import spar as t


@flow(name="spar", log_prints=True)
def checkpoint(checkpoint: str, skill: str | None = None, level: int = 0, problems: int = 0,
               config: str | None = None) -> dict:
    """level/problems 0 = the skill's training level / spar.problems."""
    cfg = load_config(config)
    # a missing limit (no `dojo up`, tests) passes with Prefect's warning instead of blocking
    with concurrency(gpu_gate.slot_names(cfg), occupy=1, timeout_seconds=cfg.spar.idle_timeout_seconds or None,
                     strict=False):
        t.wait_for_idle_gpu(cfg)
        return t.spar(cfg, checkpoint, skill, level or None, problems or None)
