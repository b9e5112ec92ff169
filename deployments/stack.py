"""The local stack in one command: a Prefect server (SQLite under the storage root), both work pools, a worker
per pool (``--limit 1``), the deployments from prefect.yaml, the zombie-run automation, then a run of
train/continuous.

    dojo up [--no-run]      start everything that is not running yet; print the UI address
    dojo down               stop exactly the processes ``dojo up`` started (by PID, from state/stack.json)
    dojo status             server, pools, workers, queue depth, curriculum, promoted checkpoint, last runs

Settings that make it survive trouble: concurrency leases on the filesystem (a server restart keeps them),
flow-run heartbeats every ``pipeline.heartbeat_seconds`` and an automation that marks a run Crashed after
``pipeline.zombie_window_seconds`` without one (≥ 3× the heartbeat; shorter windows crash healthy runs).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).parent / "prefect")


def stack_file(cfg) -> Path:
    return Path(cfg.root) / "state" / "stack.json"


def api_url(cfg) -> str:
    return f"http://{cfg.pipeline.host}:{cfg.pipeline.port}/api"


def stack_env(cfg, config_path: str | None = None) -> dict:
    """Environment for the server, the workers (and so every flow run) and the prefect CLI."""
    home = Path(cfg.root) / "prefect"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_URL")}
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url(cfg),
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem",
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(cfg.pipeline.heartbeat_seconds),
        "DOJO_HOME": str(cfg.root),
        "DOJO_REPO": str(REPO),
        "DOJO_TRAIN_POOL": cfg.pipeline.train_pool,
        "DOJO_EVAL_POOL": cfg.pipeline.eval_pool,
        "DOJO_TRAIN_GPUS": cfg.pipeline.train_gpus,
        "DOJO_EVAL_GPUS": cfg.pipeline.eval_gpus,
        "TOKENIZERS_PARALLELISM": "false",
    })
    if config_path:
        env["DOJO_CONFIG"] = str(Path(config_path).resolve())
    return env


def healthy(cfg, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(api_url(cfg) + "/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _load(cfg) -> dict:
    path = stack_file(cfg)
    return json.loads(path.read_text()) if path.exists() else {"processes": {}}


def _save(cfg, data: dict) -> None:
    path = stack_file(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _spawn(cfg, name: str, argv: list[str], env: dict, data: dict) -> int:
    """Start a process in its own session (so ``down`` can stop its whole group), logging to logs/NAME.log."""
    known = data["processes"].get(name)
    if known and alive(known["pid"]):
        return known["pid"]
    logs = Path(cfg.root) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out = open(logs / f"{name}.log", "ab")
    proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    data["processes"][name] = {"pid": proc.pid, "argv": argv, "started": time.time(),
                               "log": str(logs / f"{name}.log")}
    _save(cfg, data)
    return proc.pid


def _prefect(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([PREFECT, *args], env=env, cwd=REPO, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300)
    if check and done.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def zombie_automation(cfg) -> dict:
    p = cfg.pipeline
    return {
        "name": "dojo-crash-zombie-runs",
        "description": f"Mark a flow run Crashed after {p.zombie_window_seconds}s without a heartbeat "
                       f"(heartbeat every {p.heartbeat_seconds}s)",
        "trigger": {
            "type": "event", "posture": "Proactive", "match": {"prefect.resource.id": ["prefect.flow-run.*"]},
            "after": ["prefect.flow-run.heartbeat"],
            "expect": ["prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                       "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"],
            "for_each": ["prefect.resource.id"], "threshold": 1, "within": p.zombie_window_seconds,
        },
        "actions": [{"type": "change-flow-run-state", "state": "CRASHED",
                     "message": "Flow run marked as crashed: no heartbeat (its process died)."}],
    }


def up(cfg, config_path: str | None = None, run: bool = True, wait: float = 120.0, log=print) -> dict:
    """Bring the stack up (idempotent: running pieces are kept). Returns the stack record."""
    env = stack_env(cfg, config_path)
    data = _load(cfg)
    Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    p = cfg.pipeline
    if not healthy(cfg):
        _spawn(cfg, "server", [PREFECT, "server", "start", "--host", p.host, "--port", str(p.port)], env, data)
        deadline = time.monotonic() + wait
        while not healthy(cfg):
            pid = data["processes"]["server"]["pid"]
            if not alive(pid) or time.monotonic() > deadline:
                raise RuntimeError(f"the Prefect server did not become healthy; see {data['processes']['server']['log']}")
            time.sleep(0.5)
    log(f"server: {api_url(cfg)} (healthy)")
    for pool in (p.train_pool, p.eval_pool):
        _prefect(env, "work-pool", "create", pool, "--type", "process", "--overwrite")
        _prefect(env, "work-pool", "set-concurrency-limit", pool, "1")   # one run per GPU
        _spawn(cfg, f"worker-{pool}", [PREFECT, "worker", "start", "--pool", pool, "--limit", "1",
                                       "--name", f"{pool}-worker"], env, data)
        log(f"pool {pool}: concurrency 1, worker started (--limit 1)")
    _prefect(env, "--no-prompt", "deploy", "--all")
    log("deployments: train/continuous, evaluate/checkpoint, curriculum/scheduled")
    spec = zombie_automation(cfg)
    existing = _prefect(env, "automation", "ls", check=False).stdout
    if spec["name"] not in existing:
        auto = Path(cfg.root) / "state" / "zombie-automation.json"
        auto.write_text(json.dumps(spec, indent=2))
        _prefect(env, "automation", "create", "--from-file", str(auto))
    log(f"automation {spec['name']}: crash after {p.zombie_window_seconds}s without a heartbeat")
    if run:
        done = _prefect(env, "deployment", "run", "train/continuous")
        log(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "started train/continuous")
    data["api_url"] = api_url(cfg)
    data["ui_url"] = f"http://{p.host}:{p.port}"
    _save(cfg, data)
    log(f"Prefect UI: {data['ui_url']}")
    return data


def down(cfg, log=print, grace: float = 20.0) -> list[str]:
    """Stop exactly the processes ``up`` started (their process groups), workers before the server."""
    data = _load(cfg)
    stopped = []
    names = sorted(data["processes"], key=lambda n: n == "server")          # server last
    for name in names:
        pid = data["processes"][name]["pid"]
        if alive(pid):
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + grace
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)
            stopped.append(f"{name} (pid {pid})")
        log(f"stopped {name} (pid {pid})" if name in " ".join(stopped) else f"{name} (pid {pid}) was not running")
        del data["processes"][name]
    _save(cfg, data)
    return stopped


def status(cfg, log=print) -> dict:
    """What is running and where the training stands."""
    from dojo import promotion, queue
    from skills import curriculum

    data = _load(cfg)
    out = {"server": healthy(cfg), "processes": {n: alive(p["pid"]) for n, p in data["processes"].items()}}
    log(f"server {api_url(cfg)}: {'healthy' if out['server'] else 'DOWN'}")
    for name, ok in out["processes"].items():
        log(f"  {name}: {'running' if ok else 'not running'} (pid {data['processes'][name]['pid']})")
    if out["server"]:
        os.environ["PREFECT_API_URL"] = api_url(cfg)
        from prefect import get_client
        from prefect.client.schemas.sorting import FlowRunSort

        with get_client(sync_client=True) as client:
            for pool in (cfg.pipeline.train_pool, cfg.pipeline.eval_pool):
                try:
                    wp = client.read_work_pool(pool)
                    workers = client.read_workers_for_work_pool(pool)
                    online = [w.name for w in workers if str(w.status).upper().endswith("ONLINE")]
                    log(f"pool {pool}: {wp.status}, concurrency {wp.concurrency_limit}, workers online: "
                        f"{', '.join(online) or 'none'}")
                except Exception as exc:  # noqa: BLE001 - status must report, not crash
                    log(f"pool {pool}: not found ({exc.__class__.__name__})")
            runs = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=6)
            flows = {f: client.read_flow(f).name for f in {r.flow_id for r in runs}}
            out["runs"] = [(r.name, r.state_name) for r in runs]
            log("last runs:")
            for r in runs:
                log(f"  {flows[r.flow_id]} {r.name}: {r.state_name}"
                    + (f" ({r.work_pool_name})" if r.work_pool_name else ""))
    out["queue"] = queue.depth(cfg)
    log("queue: " + ", ".join(f"{k} {v}" for k, v in out["queue"].items()))
    state = curriculum.load(cfg.root, list(cfg.curriculum.skills))
    for skill, s in state["skills"].items():
        log(f"curriculum {skill}: mastered level {s['level']}, training level "
            f"{curriculum.training_level(state, skill)}, {len(s['history'])} evals")
    promoted = promotion.current(cfg.root)
    out["promoted"] = promoted["checkpoint"] if promoted else None
    log(f"promoted: {out['promoted'] or 'none yet'}" + (f" ({promoted['reason']})" if promoted else ""))
    return out
