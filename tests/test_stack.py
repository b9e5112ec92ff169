"""The real stack: a Prefect server, both work pools with a worker each, the deployments from prefect.yaml.
train/continuous runs on the training pool's worker and hands checkpoints to evaluate/checkpoint, which runs on
the eval pool's worker. Cancelling stops it without a partial checkpoint and returns the claimed file to the
queue; SIGKILLing the worker and its run mid-chunk loses nothing: after a restart the file is trained once,
from the last complete checkpoint."""
import os
import signal
import socket
import time
from pathlib import Path

import pytest
import yaml

from dojo import config, queue
from model import checkpoint as ckpt

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from deployments import stack as stack_mod

    home = tmp_path_factory.mktemp("stack")
    cfg_path = home / "stack.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "storage": {"root": str(home / "root")},
        "data": {"max_length": 256},
        "train": {"micro_batch_size": 2, "warmup_steps": 2},
        "eval": {"batch_size": 64, "max_new_tokens": 24},
        "curriculum": {"examples_per_file": 60, "low_water": 1},
        # the zombie window is the shortest allowed (3x heartbeat): after the SIGKILL the pool (concurrency 1)
        # stays occupied by the dead run until the automation marks it Crashed
        "pipeline": {"port": free_port(), "train_pool": "t-train", "eval_pool": "t-eval",
                     "heartbeat_seconds": 30, "zombie_window_seconds": 90},
    }))
    old_home = os.environ.pop("DOJO_HOME", None)
    cfg = config.load(str(cfg_path))
    from prefect.settings import PREFECT_API_URL, temporary_settings

    stack_mod.up(cfg, str(cfg_path), run=False, log=lambda *_: None)
    try:
        # the in-process client must talk to this stack, whatever server an earlier test module pointed at
        with temporary_settings(updates={PREFECT_API_URL: stack_mod.api_url(cfg)}):
            yield stack_mod, cfg, str(cfg_path)
    finally:
        stack_mod.down(cfg, log=lambda *_: None)
        if old_home is not None:
            os.environ["DOJO_HOME"] = old_home


@pytest.fixture(autouse=True)
def dojo_home():
    """The stack tests use the stack's own storage root (overrides conftest's per-test $DOJO_HOME)."""
    saved = os.environ.pop("DOJO_HOME", None)
    yield
    if saved is not None:
        os.environ["DOJO_HOME"] = saved


def client():
    from prefect import get_client

    return get_client(sync_client=True)


def start(name: str, **parameters):
    from prefect.deployments import run_deployment

    return run_deployment(name, parameters=parameters, timeout=0, as_subflow=False)


def wait_state(run_id, done, timeout: float):
    deadline = time.monotonic() + timeout
    with client() as c:
        while time.monotonic() < deadline:
            run = c.read_flow_run(run_id)
            if run.state and done(run.state):
                return run
            time.sleep(1)
    raise AssertionError(f"flow run {run_id} still {run.state_name} after {timeout}s")


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def processing(cfg):
    """The files being trained. Sparring files (spar.after every: an earlier test's evaluation sparred) pass
    through processing/ for a moment while the next curriculum file mixes them in; they are not the claimed file."""
    return [e for e in queue.list_entries(cfg) if e.state == "processing" and not e.name.startswith("spar_")]


def test_deployment_run_trains_and_hands_off_to_the_eval_pool(stack):
    _, cfg, cfg_path = stack
    run = start("train/continuous", max_chunks=1, steps_per_chunk=4, config=cfg_path)
    run = wait_state(run.id, lambda s: s.is_final(), 300)
    assert run.state.is_completed(), run.state
    assert run.work_pool_name == "t-train"
    (first,) = ckpt.list_checkpoints(cfg.root)
    with client() as c:
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowFilter, FlowFilterName

        evals = c.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["checkpoint"])),
                                 flow_filter=FlowFilter(name=FlowFilterName(any_=["evaluate"])))   # not spar/checkpoint
        assert evals, "train/continuous did not hand the checkpoint to evaluate/checkpoint"
        assert evals[0].parameters["checkpoint"] == str(first)
        done = wait_state(evals[0].id, lambda s: s.is_final(), 300)
    assert done.state.is_completed() and done.work_pool_name == "t-eval"
    assert "bin" in ckpt.read_ledger(first)["eval"]
    assert (cfg.root / "state" / "promoted.json").exists()


def test_a_backlogged_eval_pool_evaluates_the_newest_checkpoint(stack):
    """Checkpoints that come faster than the eval pool takes them: the evaluate/checkpoint runs still waiting are
    superseded (Cancelled, named "Superseded", saying by which checkpoint), so the pool evaluates the newest one
    next instead of working through a backlog; nothing already started is touched."""
    from prefect.client.schemas.actions import WorkPoolUpdate
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    from dojo import leaderboard

    _, cfg, cfg_path = stack
    before = ckpt.list_checkpoints(cfg.root)
    with client() as c:
        c.update_work_pool("t-eval", WorkPoolUpdate(is_paused=True))    # the eval pool busy elsewhere
    try:
        run = wait_state(start("train/continuous", max_chunks=3, steps_per_chunk=2, config=cfg_path).id,
                         lambda s: s.is_final(), 300)
        assert run.state.is_completed(), run.state
        new = [str(p) for p in ckpt.list_checkpoints(cfg.root) if p not in before]
        assert len(new) == 3
        with client() as c:
            evals = {r.parameters["checkpoint"]: r for r in c.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["evaluate"]))) if r.parameters["checkpoint"] in new}
    finally:
        with client() as c:
            c.update_work_pool("t-eval", WorkPoolUpdate(is_paused=False))
    assert set(evals) == set(new)
    for old, newer in zip(new, new[1:]):                                # each by the next one handed off
        assert evals[old].state.is_cancelled() and evals[old].state.name == "Superseded", evals[old].state
        assert f"superseded by {Path(newer).name}" in evals[old].state.message
    newest = wait_state(evals[new[2]].id, lambda s: s.is_final(), 300)
    assert newest.state.is_completed(), newest.state
    evaluated = {row["checkpoint"] for row in leaderboard.load(cfg.root)}
    assert Path(new[2]).name in evaluated and not {Path(p).name for p in new[:2]} & evaluated


def test_cancel_stops_without_partial_checkpoint_and_requeues(stack):
    _, cfg, cfg_path = stack
    before = ckpt.list_checkpoints(cfg.root)
    run = start("train/continuous", max_chunks=1, steps_per_chunk=100000, config=cfg_path)
    wait_for(lambda: processing(cfg), 180, "a claimed file")
    (claimed,) = processing(cfg)
    time.sleep(3)    # well inside the chunk
    from prefect.states import Cancelling

    with client() as c:
        c.set_flow_run_state(run.id, Cancelling())
    t0 = time.monotonic()
    final = wait_state(run.id, lambda s: s.is_final(), 90)
    assert final.state.is_cancelled(), final.state
    assert time.monotonic() - t0 < 60
    assert ckpt.list_checkpoints(cfg.root) == before
    assert not [p for p in (cfg.root / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    entry = queue.find(cfg, claimed.id)
    assert entry.state == "queued"


def test_sigkill_mid_chunk_loses_nothing(stack):
    stack_mod, cfg, cfg_path = stack
    before = ckpt.list_checkpoints(cfg.root)
    run = start("train/continuous", max_chunks=1, steps_per_chunk=100000, config=cfg_path)
    wait_for(lambda: processing(cfg), 180, "a claimed file")
    (claimed,) = processing(cfg)
    lock = Path(cfg.root) / "state" / "continuous.lock"
    wait_for(lambda: lock.read_text().strip().isdigit(), 30, "the run's lock")
    flow_pid = int(lock.read_text().strip())
    worker = stack_mod._load(cfg)["processes"]["worker-t-train"]["pid"]
    os.killpg(worker, signal.SIGKILL)            # the worker, then the run it started: a crashed host
    os.kill(flow_pid, signal.SIGKILL)
    wait_for(lambda: not stack_mod.alive(flow_pid), 10, "the run to die")
    assert processing(cfg) and ckpt.list_checkpoints(cfg.root) == before
    stack_mod.up(cfg, cfg_path, run=False, log=lambda *_: None)     # restart what died
    # The dead run holds the pool's one slot until it is marked Crashed: by the zombie automation, 60-90 s after
    # the kill (zombie_window_seconds >= 3 x Prefect's 30 s minimum heartbeat). CI marks it through the API — the
    # automation's own action — after checking the automation the server holds, to stay under 20 minutes;
    # DOJO_WAIT_FOR_AUTOMATION=1 waits for the automation itself (it did in every CI run up to 2026-12-02).
    with client() as c:
        (automation,) = c.read_automations_by_name("dojo-crash-zombie-runs")
        trigger, (action,) = automation.trigger, automation.actions
        assert str(trigger.posture.value) == "Proactive" and trigger.within.total_seconds() == 90
        assert trigger.after == {"prefect.flow-run.heartbeat"} and "prefect.flow-run.heartbeat" in trigger.expect
        assert action.type == "change-flow-run-state" and str(action.state.value) == "CRASHED"
        if not os.environ.get("DOJO_WAIT_FOR_AUTOMATION"):
            from prefect.states import Crashed

            c.set_flow_run_state(run.id, Crashed(message="its worker's host died (SIGKILL)"), force=True)
    crashed = wait_state(run.id, lambda s: s.is_final(), 240)
    assert crashed.state.is_crashed(), crashed.state
    again = start("train/continuous", max_chunks=1, steps_per_chunk=4, config=cfg_path)
    again = wait_state(again.id, lambda s: s.is_final(), 300)
    assert again.state.is_completed(), again.state
    after = ckpt.list_checkpoints(cfg.root)
    assert len(after) == len(before) + 1
    ledger = ckpt.read_ledger(after[-1])
    assert ledger["parent"] == (before[-1].name if before else None)     # resumed from the last complete one
    assert len(ledger["lineage_files"]) == len(set(ledger["lineage_files"]))   # no file trained twice
    assert queue.find(cfg, claimed.id).state == "done"
    assert not processing(cfg)
