"""The Prefect server on a real PostgreSQL (a throwaway cluster: tests/helpers.py postgres_cluster), as on the
central box of several hosts: ``dojo up --server-only`` (server, pools, deployments, automation; no local worker)
and a ``dojo worker`` per pool, each started the way a user on another host starts it, with ``--gpus``.

A deployment run of train/continuous trains on the train pool's worker, whose ``--gpus`` is the run's
CUDA_VISIBLE_DEVICES (the deployment says otherwise), and hands the checkpoint to evaluate/checkpoint on the eval
pool's worker; SIGKILLing the train worker and its run mid-chunk loses nothing; no SQLite file is written; the
database password appears in no log, record or printed config; an unreachable database, a wrong password, a
missing server or pool fail at once with a clear message."""
import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml

from dojo import cli, config, queue
from tests.helpers import postgres_cluster
from model import checkpoint as ckpt

pytestmark = pytest.mark.slow
PASSWORD = "pg-Pa55-w0rd-x7"
TRAIN_GPUS, EVAL_GPUS = "3,5", "7"          # what the workers say; the deployments say 0 and 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DOJO_HOME", "DOJO_CONFIG", "DOJO_DATABASE_URL") and not k.startswith("PREFECT_")}
    return {**env, **extra}


def start_worker(pg, pool: str, gpus: str) -> subprocess.Popen:
    """``dojo worker --pool POOL --gpus GPUS`` as a user types it on another host (PREFECT_API_URL exported)."""
    log = open(Path(pg["home"]) / f"dojo-worker-{pool}.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "dojo.cli", "worker", "--config", pg["cfg_path"], "--pool", pool,
                             "--gpus", gpus], env=clean_env(PREFECT_API_URL=pg["api_url"]), stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def client():
    from prefect import get_client

    return get_client(sync_client=True)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def online(pool: str) -> bool:
    with client() as c:
        return any(str(w.status).upper().endswith("ONLINE") for w in c.read_workers_for_work_pool(pool))


@pytest.fixture(scope="module")
def pg(tmp_path_factory):
    from deployments import stack as stack_mod

    home = tmp_path_factory.mktemp("pgstack")
    with postgres_cluster(PASSWORD) as url:
        cfg_path = home / "dojo.yaml"
        cfg_path.write_text(yaml.safe_dump({
            "storage": {"root": str(home / "root")},
            "data": {"max_length": 256},
            "train": {"micro_batch_size": 2, "warmup_steps": 2},
            "eval": {"batch_size": 64, "max_new_tokens": 24},
            "curriculum": {"examples_per_file": 60, "low_water": 1},
            "pipeline": {"port": free_port(), "train_pool": "pg-train", "eval_pool": "pg-eval",
                         "train_gpus": "0", "eval_gpus": "1", "heartbeat_seconds": 30,
                         "zombie_window_seconds": 90, "database_url": url, "eval_concurrency": 2},
        }))
        saved = {k: os.environ.pop(k) for k in ("DOJO_HOME", "DOJO_DATABASE_URL") if k in os.environ}
        cfg = config.load(str(cfg_path))
        from prefect.settings import PREFECT_API_URL, temporary_settings

        t0, lines = time.monotonic(), []
        stack_mod.up(cfg, str(cfg_path), run=False, workers=False, log=lines.append)
        pg = {"url": url, "cfg": cfg, "cfg_path": str(cfg_path), "home": str(home), "stack": stack_mod,
              "api_url": stack_mod.api_url(cfg), "workers": {}, "printed": lines}
        try:
            with temporary_settings(updates={PREFECT_API_URL: pg["api_url"]}):
                for pool, gpus in (("pg-train", TRAIN_GPUS), ("pg-eval", EVAL_GPUS)):
                    pg["workers"][pool] = start_worker(pg, pool, gpus)
                for pool in pg["workers"]:
                    wait_for(lambda: online(pool), 90, f"the dojo worker of {pool} online")
                pg["up_seconds"] = time.monotonic() - t0
                yield pg
        finally:
            for proc in pg["workers"].values():
                stop(proc)
            stack_mod.down(cfg, log=lambda *_: None)
            os.environ.update(saved)


@pytest.fixture(autouse=True)
def dojo_home():
    """These tests use the stack's own storage root (overrides conftest's per-test $DOJO_HOME)."""
    saved = os.environ.pop("DOJO_HOME", None)
    yield
    if saved is not None:
        os.environ["DOJO_HOME"] = saved


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


def environ(pid: int) -> dict:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(kv.decode(errors="replace").partition("=")[::2] for kv in raw.split(b"\0") if b"=" in kv)


def flow_pid(cfg) -> int:
    lock = Path(cfg.root) / "state" / "continuous.lock"
    wait_for(lambda: lock.exists() and lock.read_text().strip().isdigit(), 180, "the run's lock")
    return int(lock.read_text().strip())


def processing(cfg):
    return [e for e in queue.list_entries(cfg) if e.state == "processing"]


def sql(url: str, query: str):
    import asyncpg

    async def go():
        conn = await asyncpg.connect("postgresql" + url[len("postgresql+asyncpg"):])
        try:
            return await conn.fetch(query)
        finally:
            await conn.close()

    return asyncio.run(go())


# ---------------------------------------------------------------- the stack on PostgreSQL, workers by dojo worker
def test_remote_workers_train_hand_off_and_their_gpus_win(pg):
    cfg, cfg_path = pg["cfg"], pg["cfg_path"]
    with client() as c:
        deployment = c.read_deployment_by_name("train/continuous")
    assert deployment.job_variables["env"]["CUDA_VISIBLE_DEVICES"] == "0"     # what the deployment asks for
    # resolved when dojo up deployed: every worker host runs the flows from a checkout at this same path
    assert deployment.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(pg["stack"].REPO)}}]
    run = start("train/continuous", max_chunks=1, steps_per_chunk=4, config=cfg_path)
    pid = flow_pid(cfg)
    seen = environ(pid)
    assert seen["PREFECT__FLOW_RUN_ID"] == str(run.id)
    assert seen["CUDA_VISIBLE_DEVICES"] == TRAIN_GPUS        # the worker's --gpus won on its host
    assert seen["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"
    assert seen["DOJO_REPO"] == str(pg["stack"].REPO)
    assert "PREFECT_SERVER_DATABASE_CONNECTION_URL" not in seen and PASSWORD not in str(seen)
    run = wait_state(run.id, lambda s: s.is_final(), 300)
    assert run.state.is_completed(), run.state
    assert run.work_pool_name == "pg-train"
    (first,) = ckpt.list_checkpoints(cfg.root)
    with client() as c:
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

        evals = c.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["checkpoint"])))
        assert evals, "train/continuous did not hand the checkpoint to evaluate/checkpoint"
        assert evals[0].parameters["checkpoint"] == str(first)
        done = wait_state(evals[0].id, lambda s: s.is_final(), 300)
    assert done.state.is_completed() and done.work_pool_name == "pg-eval"
    assert "bin" in ckpt.read_ledger(first)["eval"]
    assert (cfg.root / "state" / "promoted.json").exists()
    # the runs are rows in PostgreSQL: this server keeps its state there
    rows = sql(pg["url"], f"SELECT state_type FROM flow_run WHERE id IN ('{run.id}', '{done.id}')")
    assert sorted(r["state_type"] for r in rows) == ["COMPLETED", "COMPLETED"]


def test_sigkill_of_a_remote_worker_mid_chunk_loses_nothing(pg):
    cfg, cfg_path = pg["cfg"], pg["cfg_path"]
    before = ckpt.list_checkpoints(cfg.root)
    run = start("train/continuous", max_chunks=1, steps_per_chunk=100000, config=cfg_path)
    wait_for(lambda: processing(cfg), 180, "a claimed file")
    (claimed,) = processing(cfg)
    pid = flow_pid(cfg)
    assert environ(pid)["PREFECT__FLOW_RUN_ID"] == str(run.id)
    os.killpg(pg["workers"]["pg-train"].pid, signal.SIGKILL)       # the worker, then the run it started: a dead host
    os.kill(pid, signal.SIGKILL)
    pg["workers"]["pg-train"].wait(10)
    wait_for(lambda: not pg["stack"].alive(pid), 10, "the run to die")
    assert processing(cfg) and ckpt.list_checkpoints(cfg.root) == before
    pg["workers"]["pg-train"] = start_worker(pg, "pg-train", TRAIN_GPUS)           # the host comes back
    # the pool's one slot stays taken by the dead run until it is marked Crashed. The zombie automation does that
    # zombie_window_seconds (>= 90) after the last heartbeat; tests/test_stack.py checks its definition (and waits
    # for it with DOJO_WAIT_FOR_AUTOMATION=1). Here the run is marked Crashed through the API (the automation's own
    # action), to keep CI under 20 minutes; the automation is checked to exist on this server.
    from prefect import get_client
    from prefect.states import Crashed

    with get_client(sync_client=True) as c:
        assert c.read_automations_by_name("dojo-crash-zombie-runs"), "dojo up did not create the zombie automation"
        c.set_flow_run_state(run.id, Crashed(message="the worker's host died (SIGKILL)"), force=True)
    again = start("train/continuous", max_chunks=1, steps_per_chunk=4, config=cfg_path)
    crashed = wait_state(run.id, lambda s: s.is_final(), 60)
    assert crashed.state.is_crashed(), crashed.state
    again = wait_state(again.id, lambda s: s.is_final(), 300)
    assert again.state.is_completed(), again.state
    after = ckpt.list_checkpoints(cfg.root)
    assert len(after) == len(before) + 1
    ledger = ckpt.read_ledger(after[-1])
    assert ledger["parent"] == (before[-1].name if before else None)     # resumed from the last complete one
    assert len(ledger["lineage_files"]) == len(set(ledger["lineage_files"]))   # no file trained twice
    assert queue.find(cfg, claimed.id).state == "done"
    assert not processing(cfg)


def test_no_sqlite_file_and_the_password_is_never_shown(pg):
    cfg, home = pg["cfg"], Path(pg["home"])
    assert not [p for p in home.rglob("*") if p.name.startswith("prefect.db") or p.suffix in (".db", ".sqlite")]
    rows = sql(pg["url"], "SELECT name, concurrency_limit FROM work_pool WHERE name LIKE 'pg-%' ORDER BY name")
    assert [(r["name"], r["concurrency_limit"]) for r in rows] == [("pg-eval", 2), ("pg-train", 1)]
    # records, logs (server, workers, runs, training), the automation spec: nothing under the home holds it
    holders = [p for p in home.rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()]
    assert holders == [home / "dojo.yaml"]
    assert PASSWORD not in (cfg.root / "state" / "stack.json").read_text()
    server = pg["stack"]._load(cfg)["processes"]["server"]["pid"]
    assert PASSWORD not in Path(f"/proc/{server}/cmdline").read_text()
    for proc in pg["workers"].values():          # the workers (and so their runs) never get the database URL
        assert PASSWORD not in str(environ(proc.pid))
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(["config", "show", "--config", pg["cfg_path"]]) == 0
    shown = yaml.safe_load(out.getvalue())["pipeline"]["database_url"]
    assert shown == pg["url"].replace(PASSWORD, "***") and PASSWORD not in out.getvalue()
    with redirect_stdout(out):
        assert cli.main(["config", "show", "--docs", "--config", pg["cfg_path"]]) == 0
    assert PASSWORD not in out.getvalue() and PASSWORD not in repr(cfg)
    lines = pg["printed"]                         # what `dojo up --server-only` printed
    assert any("database postgresql+asyncpg://dojo:***@127.0.0.1" in line for line in lines), lines
    assert any("no local worker" in line for line in lines), lines
    assert PASSWORD not in "\n".join(lines)


# ---------------------------------------------------------------- clear, fast failures
def run_cli(*argv) -> tuple[int, str, float]:
    err, out = io.StringIO(), io.StringIO()
    t0 = time.monotonic()
    with redirect_stderr(err), redirect_stdout(out):
        code = cli.main(list(argv))
    return code, err.getvalue() + out.getvalue(), time.monotonic() - t0


def write_cfg(path: Path, **pipeline) -> str:
    path.write_text(yaml.safe_dump({"storage": {"root": str(path.parent / "root")},
                                    "pipeline": {"port": free_port(), **pipeline}}))
    return str(path)


def test_unreachable_database_or_wrong_password_fail_fast_naming_host_port(pg, tmp_path):
    port = free_port()             # nothing listens there
    cfg_path = write_cfg(tmp_path / "dead.yaml", database_url=f"postgresql+asyncpg://dojo:{PASSWORD}@127.0.0.1:{port}/x")
    code, text, seconds = run_cli("up", "--no-run", "--config", cfg_path)
    assert code == 1 and f"127.0.0.1:{port}" in text and "cannot be used" in text, text
    assert PASSWORD not in text and "dojo:***@" in text and seconds < 30
    assert not (tmp_path / "root" / "state" / "stack.json").exists() or '"server"' not in (
        tmp_path / "root" / "state" / "stack.json").read_text()            # no server was started
    wrong = pg["url"].replace(PASSWORD, "not-" + PASSWORD)
    cfg_path = write_cfg(tmp_path / "wrong.yaml", database_url=wrong)
    code, text, seconds = run_cli("up", "--no-run", "--config", cfg_path)
    assert code == 1 and "password authentication failed" in text, text
    assert PASSWORD not in text and seconds < 30


def test_dojo_worker_refuses_a_missing_server_a_missing_pool_and_bad_gpus(pg, tmp_path, monkeypatch):
    cfg_path = write_cfg(tmp_path / "w.yaml")
    code, text, _ = run_cli("worker", "--config", cfg_path, "--pool", "pg-train",
                            "--api-url", f"http://127.0.0.1:{free_port()}/api")
    assert code == 1 and "no Prefect server answers at http://127.0.0.1:" in text, text
    code, text, _ = run_cli("worker", "--config", cfg_path, "--pool", "pg-tra1n", "--api-url", pg["api_url"])
    assert code == 1 and "work pool 'pg-tra1n' does not exist" in text, text
    code, text, _ = run_cli("worker", "--config", cfg_path, "--pool", "pg-train", "--gpus", "0;rm",
                            "--api-url", pg["api_url"])
    assert code == 2 and "--gpus '0;rm' is not allowed" in text, text
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    code, text, _ = run_cli("worker", "--config", cfg_path, "--pool", "pg-train")     # no URL, no local stack
    assert code == 1 and "--api-url" in text and "PREFECT_API_URL" in text, text


# ---------------------------------------------------------------- the setting itself (no PostgreSQL needed)
def test_database_url_from_the_environment_is_checked_and_redacted(tmp_path):
    url = f"postgresql+asyncpg://prefect:{PASSWORD}@db.lab:5433/prefect"
    cfg = config.from_dict({}, env={"DOJO_HOME": str(tmp_path / "h"), "DOJO_DATABASE_URL": url})
    assert cfg.pipeline.database_url == url
    assert cfg.to_dict()["pipeline"]["database_url"] == "postgresql+asyncpg://prefect:***@db.lab:5433/prefect"
    assert config.database_address(url) == ("db.lab", 5433)
    assert PASSWORD not in repr(cfg)
    for bad, why in ((f"postgres://u:{PASSWORD}@h/db", "is not allowed"),
                     (f"mysql+aiomysql://u:{PASSWORD}@h/db", "is not allowed"),
                     (f"postgresql+asyncpg://u:{PASSWORD}@h:99999/db", "has no valid HOST:PORT"),
                     (f"postgresql+asyncpg://u:{PASSWORD}@h:5432/", "names no database")):
        with pytest.raises(ValueError) as err:
            config.from_dict({"pipeline": {"database_url": bad}}, env={"DOJO_HOME": str(tmp_path / "h")})
        assert why in str(err.value) and "pipeline.database_url" in str(err.value)
        assert PASSWORD not in str(err.value) and "u:***@" in str(err.value)
    with pytest.raises(ValueError, match=r"\$DOJO_DATABASE_URL: .*is not allowed"):
        config.from_dict({}, env={"DOJO_HOME": str(tmp_path / "h"), "DOJO_DATABASE_URL": "postgres://x@h/db"})
    with pytest.raises(ValueError, match="pipeline.eval_concurrency"):
        config.from_dict({"pipeline": {"eval_concurrency": 0}}, env={"DOJO_HOME": str(tmp_path / "h")})
