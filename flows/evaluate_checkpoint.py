"""evaluate/checkpoint — on the eval pool: score a checkpoint on every level up to its skill's training level,
record curriculum progress (advance on the mean of the last evals), and promote it when it beats the promoted
checkpoint without regressing a mastered level; then start spar/checkpoint for it (``spar.after``) without
waiting. Artifacts: eval table, promotion decision, curriculum state.

hand_off: "deployment" starts the spar/checkpoint deployment (timeout=0: not waited for; a sparring run of an
older checkpoint still waiting for the pool is superseded: ``flows.start_newest``); "inline" runs the spar
flow here (tests); "auto" = inline when this run is itself a subflow (train/continuous with hand_off inline),
else the deployment."""
from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from dojo.spar import wants_spar
from flows import load_config, start_newest
from flows.spar_checkpoint import checkpoint as spar_inline
from tasks import pipeline as t


@flow(name="evaluate", log_prints=True)
def checkpoint(checkpoint: str, config: str | None = None, hand_off: str = "auto") -> dict:
    cfg = load_config(config)
    out = t.evaluate_and_promote(cfg, checkpoint)
    if not wants_spar(cfg, out["promoted"]):
        return out
    if hand_off == "inline" or (hand_off == "auto" and flow_run.parent_flow_run_id):
        out["spar"] = spar_inline(out["checkpoint"], config=config)
        return out
    try:
        run = start_newest("spar/checkpoint", out["checkpoint"], config, get_run_logger(),
                           supersede=cfg.pipeline.eval_backlog == "newest")
        get_run_logger().info("handed %s to spar/checkpoint (run %s)", out["checkpoint"], run.name)
    except Exception as exc:   # noqa: BLE001 - the evaluation stands; sparring is a background extra
        get_run_logger().warning("could not start spar/checkpoint for %s: %r", out["checkpoint"], exc)
    return out
