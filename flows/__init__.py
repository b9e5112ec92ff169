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


def start_newest(deployment: str, checkpoint: str, config: str | None, log, supersede: bool = True) -> object:
    """Start ``deployment`` for ``checkpoint`` without waiting, and supersede its runs still waiting (Scheduled)
    for an older checkpoint of the same root and config: a run that has not started is cancelled as
    "Superseded", naming the newer checkpoint. The eval pool runs one job at a time; when checkpoints come faster
    than it evaluates (the tiny model at BIN level 2: a checkpoint every ~15 s, an evaluation and a sparring round
    ~25 s) a first-in-first-out backlog grows without bound — 7 minutes behind after 50 minutes — so advances and
    promotions are decided late and sparring data is stale before it reaches the queue. The newest checkpoint is
    the one worth evaluating; a run already started is never touched. ``supersede`` False
    (``pipeline.eval_backlog: all``) only starts the run. Returns the new flow run."""
    from prefect import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterDeploymentId, FlowRunFilterState,
                                                FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment
    from prefect.states import Cancelled

    run = run_deployment(deployment, parameters={"checkpoint": checkpoint, "config": config}, timeout=0,
                         as_subflow=False)
    if not supersede:
        return run
    folder, name = os.path.split(checkpoint.rstrip("/"))
    try:
        with get_client(sync_client=True) as client:
            waiting = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[run.deployment_id]),
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))))
            for other in waiting:
                theirs = other.parameters.get("checkpoint")
                if (other.id == run.id or not isinstance(theirs, str) or other.parameters.get("config") != config
                        or os.path.split(theirs.rstrip("/"))[0] != folder):
                    continue
                result = client.set_flow_run_state(other.id, Cancelled(
                    name="Superseded", message=f"superseded by {name}: not started while a newer checkpoint of the "
                                               f"same root was handed to {deployment}"))
                if result.state is not None and result.state.is_cancelled():
                    log.info("%s for %s superseded by %s (the eval pool is behind; run %s)", deployment,
                             os.path.basename(theirs), name, other.name)
    except Exception as exc:     # noqa: BLE001 - the new run is started; an unsuperseded backlog only costs time
        log.warning("could not supersede waiting %s runs: %r", deployment, exc)
    return run
