"""The local stack in one command: a Prefect server (SQLite under the storage root, or PostgreSQL with
``pipeline.database_url`` / $DOJO_DATABASE_URL), both work pools, a worker per pool (``--limit 1``), the
deployments from prefect.yaml, the zombie-run automation, with ``serve.enabled`` the Oracle (``dojo serve``,
stopped by ``dojo down`` like the rest, its URL in ``dojo status``), then a run of train/continuous.

    dojo up [--no-run]      start everything that is not running yet; print the UI address
    dojo up --server-only   the central box of several hosts: server, pools, deployments, automation; no local
                            worker, no run (each GPU host runs ``dojo worker``: deployments/worker.py)
    dojo down               stop the processes this home's ``dojo up`` started, and nothing else
    dojo status             this home's server, pools, workers, queue depth, curriculum, promoted checkpoint, runs

Pool concurrency: the train pool 1 (one trainer per storage root), the eval pool ``pipeline.eval_concurrency`` (one
run per eval worker); every worker runs one run at a time. A PostgreSQL URL is checked (reachable, password, database)
before the server starts, and only the server's environment holds it: its password is never logged or recorded.

Settings that make it survive trouble: concurrency leases on the filesystem (a server restart keeps them),
flow-run heartbeats every ``pipeline.heartbeat_seconds`` and an automation that marks a run Crashed after
``pipeline.zombie_window_seconds`` without one (≥ 3× the heartbeat; shorter windows crash healthy runs).

One stack per home, and only its own processes are ever signalled. ``state/stack.json`` records the home, a
random token, the server's port and, per process, its PID with what makes that PID this process and not a
later one: the boot, the start time (``/proc/PID/stat`` field 22) and the command line. Every process is
started in its own session with ``DOJO_HOME`` and ``DOJO_STACK_TOKEN`` in its environment. A process counts
as this home's (``check``) only when all of these still match and it leads its own process group; anything
else is never signalled and its entry is dropped with the reason. The server counts as up only when that
process holds the socket listening on the recorded port and answers ``/api/health`` — another home's server
on the same port is never reported or joined; ``dojo up`` moves to a free port instead. Linux only (/proc).
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from dojo.storage import StateError, read_json, write_json

REPO = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).parent / "prefect")
WHAT = "stack record (written by dojo up)"
PORT_SEARCH = 100          # ports tried above pipeline.port when it is taken


# ---------------------------------------------------------------- the record: state/stack.json
def stack_file(cfg) -> Path:
    return Path(cfg.root) / "state" / "stack.json"


def _load(cfg) -> dict:
    """This home's stack record; ``{"processes": {}}`` when there is none. A broken file raises StateError."""
    data = read_json(stack_file(cfg), expect=dict, what=WHAT, default=None)
    if data is None:
        return {"processes": {}}
    data.setdefault("processes", {})
    if not isinstance(data["processes"], dict):
        raise StateError(f"{stack_file(cfg)}: the {WHAT} has 'processes' that is not a JSON object; "
                         f"fix it or move it away")
    return data


def _save(cfg, data: dict) -> None:
    stack_file(cfg).parent.mkdir(parents=True, exist_ok=True)
    write_json(stack_file(cfg), data)


def _claim(cfg, data: dict) -> None:
    """Make ``data`` this home's record: a fresh token when it has none, belongs to another home (a copied
    root) or no process of it is left."""
    if data.get("home") != str(cfg.root) or not isinstance(data.get("token"), str) or not data["processes"]:
        data["home"], data["token"] = str(cfg.root), secrets.token_hex(16)


def server_port(cfg, data: dict | None = None) -> int:
    """The port of this home's server: the one ``dojo up`` recorded for this home, else ``pipeline.port``."""
    data = _load(cfg) if data is None else data
    port = data.get("port")
    if data.get("home") == str(cfg.root) and type(port) is int and 1 <= port <= 65535:
        return port
    return cfg.pipeline.port


def home_of(cfg) -> str:
    """The home the stack's processes carry as ``DOJO_HOME``: the storage URL for a URL root (its flow runs must
    load the config with the same remote root, not the local working copy), else the root folder."""
    return cfg.remote or str(cfg.root)


def api_url(cfg, port: int | None = None) -> str:
    return f"http://{cfg.pipeline.host}:{port or server_port(cfg)}/api"


def vacuum_env(cfg) -> dict:
    """Prefect's database vacuum: finished flow runs and events older than ``retention.prefect_days`` go."""
    seconds = str(int(cfg.retention.prefect_days * 86400))
    return {"PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events,flow_runs",
            "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD": seconds,
            "PREFECT_SERVER_EVENTS_RETENTION_PERIOD": f"PT{seconds}S"}     # a plain timedelta: ISO 8601 only


def database_url(cfg) -> str:
    """The Prefect server's database: ``pipeline.database_url`` (or $DOJO_DATABASE_URL), else SQLite under the root."""
    return cfg.pipeline.database_url or f"sqlite+aiosqlite:///{Path(cfg.root) / 'prefect' / 'prefect.db'}"


def stack_env(cfg, config_path: str | None = None, port: int | None = None) -> dict:
    """Environment for the server, the workers (and so every flow run) and the prefect CLI. A PostgreSQL URL (it
    holds a password) is not in it: only the server gets it (``server_env``)."""
    home = Path(cfg.root) / "prefect"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PREFECT_API_URL") and k != "PREFECT_SERVER_DATABASE_CONNECTION_URL"}
    if not cfg.pipeline.database_url:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = database_url(cfg)
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url(cfg, port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem",
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(cfg.pipeline.heartbeat_seconds),
        # a worker looks for scheduled runs every 2 s, not Prefect's 10: a handed-off evaluation starts at once
        # (one small query to the server per worker; an exported value wins)
        "PREFECT_WORKER_QUERY_SECONDS": os.environ.get("PREFECT_WORKER_QUERY_SECONDS", "2"),
        # the server's database must not grow for ever: old flow runs (with their logs) and events are vacuumed
        **vacuum_env(cfg),
        "DOJO_HOME": home_of(cfg),
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


def server_env(cfg, env: dict) -> dict:
    """The server's environment: ``env`` with its database."""
    return {**env, "PREFECT_SERVER_DATABASE_CONNECTION_URL": database_url(cfg)}


def check_database(cfg, timeout: float = 10.0) -> None:
    """Fail fast, with HOST:PORT and never the password, when the configured PostgreSQL database cannot be used
    (unreachable, refused, wrong password, no such database): a Prefect server started on it would retry or die
    with a long traceback in its log instead. Nothing to check for SQLite."""
    url = cfg.pipeline.database_url
    if not url.startswith("postgresql+asyncpg://"):
        return
    import asyncio

    import asyncpg

    from dojo.config import database_address, redact_url

    host, port = database_address(url)
    userinfo = url.partition("://")[2].rpartition("@")[0]
    password = userinfo.partition(":")[2]

    async def probe():
        conn = await asyncpg.connect("postgresql" + url[len("postgresql+asyncpg"):], timeout=timeout)
        await conn.close()

    try:
        asyncio.run(asyncio.wait_for(probe(), timeout + 2))
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if password:
            why = why.replace(password, "***")
        raise RuntimeError(f"the Prefect server's database at {host}:{port} cannot be used ({why}); check that "
                           f"PostgreSQL runs there and accepts this host, and the URL "
                           f"{redact_url(url)} (pipeline.database_url or $DOJO_DATABASE_URL)") from None


# ---------------------------------------------------------------- process identity (/proc)
def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, process group, start time in clock ticks after boot) of ``pid``; None when there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()     # the name (field 2) may hold spaces and parentheses
    return fields[0], int(fields[2]), int(fields[19])  # fields 3, 5 and 22


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")] if raw else []


def _environ(pid: int) -> dict | None:
    """The environment ``pid`` was started with; None when it cannot be read (another user's process)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    return dict(kv.decode(errors="replace").partition("=")[::2] for kv in raw.split(b"\0") if b"=" in kv)


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def identity(pid: int) -> dict | None:
    """What tells this process from a later one that reuses its PID: the boot, its start time, its command line."""
    st, cmd = _proc_stat(pid), _cmdline(pid)
    if st is None or cmd is None:
        return None
    return {"boot_id": _boot_id(), "starttime": st[2], "cmdline": cmd}


def settled_identity(pid: int, wait: float = 5.0) -> dict | None:
    """``identity`` of a process just started. Popen returns once exec succeeded, but the kernel fills in the new
    program's command line a moment later: read in that window, /proc/PID/cmdline is empty (seen once in a real
    ``dojo up``, which then took its own server for "another process"). So wait, briefly, for it."""
    deadline = time.monotonic() + wait
    while (now := identity(pid)) is not None and not now["cmdline"] and time.monotonic() < deadline:
        time.sleep(0.01)
    return now


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has exited; only its parent has not collected it yet)."""
    st = _proc_stat(pid)
    return st is not None and st[0] not in "ZXx"


def _started_at(ticks: int) -> str:
    btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                 if line.startswith("btime "))
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(btime + ticks / os.sysconf("SC_CLK_TCK")))


def _short(cmd: list[str], width: int = 80) -> str:
    text = " ".join(cmd) or "?"
    return text if len(text) <= width else text[:width - 1] + "…"


def check(cfg, data: dict, name: str) -> tuple[str, str]:
    """Whether the entry ``name`` of ``data`` is a process this home's ``dojo up`` started and that still runs.

    Returns (verdict, text): ``"ours"`` (its process group may be signalled), ``"gone"`` (it ended) or
    ``"foreign"`` (never signal it: a malformed entry, a PID now used by another process, an entry recorded
    without an identity, a process of another home, a process that does not lead its own group)."""
    entry = data["processes"][name]
    pid = entry.get("pid") if isinstance(entry, dict) else None
    if type(pid) is not int or pid <= 1:        # 0 is our own group, 1 makes killpg signal every process
        return "foreign", f"pid {pid!r} ({name}) is not a valid process id"
    if not alive(pid):
        return "gone", f"{name} (pid {pid}) is not running"
    now = identity(pid)
    if now is None:
        return "gone", f"{name} (pid {pid}) is not running"
    if any(entry.get(k) is None for k in now):
        return "foreign", (f"pid {pid} ({name}) was recorded without its start time and command line (by an older "
                           f"dojo?), so dojo cannot prove it started it; it is {_short(now['cmdline'])}")
    if any(entry[k] != now[k] for k in now):
        return "foreign", (f"pid {pid} ({name}) is now another process (started at {_started_at(now['starttime'])}, "
                           f"cmd {_short(now['cmdline'])})")
    env = _environ(pid)
    if env is None:
        return "foreign", f"pid {pid} ({name}): its environment cannot be read, so dojo cannot prove it started it"
    if env.get("DOJO_HOME") != home_of(cfg):
        return "foreign", f"pid {pid} ({name}) belongs to the stack of another home ({env.get('DOJO_HOME')})"
    if env.get("DOJO_STACK_TOKEN") != data.get("token"):
        return "foreign", f"pid {pid} ({name}) does not carry this stack's token (started by another dojo up)"
    group = _proc_stat(pid)
    if group is None or group[1] != pid:
        return "foreign", (f"pid {pid} ({name}) does not lead its own process group "
                           f"({'gone' if group is None else group[1]}); dojo only signals groups it created")
    return "ours", f"{name} (pid {pid})"


def _stop(cfg, data: dict, name: str, grace: float) -> None:
    """SIGTERM to the process group of ``name`` (checked ours by the caller), SIGKILL after ``grace`` seconds —
    after checking again that the PID is still that process."""
    pid = data["processes"][name]["pid"]
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive(pid) and check(cfg, data, name)[0] == "ours":
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------- ports and the server
def _port_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now (the test ``prefect server start`` makes)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(address)
        return True
    except OSError:
        return False


def _listeners(port: int, pids=None) -> list[int]:
    """Which of ``pids`` (default: every process we may inspect) hold a socket listening on TCP ``port``."""
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()       # sl, local_address (hex ip:port), rem_address, st (0A = LISTEN), …, inode (10th)
            if len(f) > 9 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                sockets.add(f"socket:[{f[9]}]")
    if not sockets:
        return []
    if pids is None:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    found = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in sockets:
                    found.append(pid)
                    break
            except OSError:
                continue
    return found


def _get(url: str, timeout: float):
    """(status, parsed JSON or None) of a GET; None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = r.read(1 << 20)
            status = r.status
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (OSError, ValueError):
        return None
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def port_owner(host: str, port: int, timeout: float = 2.0) -> str | None:
    """Who holds ``port``, in words (None when it is free): which process and dojo home, when we may look."""
    if _port_free(host, port):
        return None
    for pid in _listeners(port):
        env = _environ(pid) or {}
        home = f", serving dojo home {env['DOJO_HOME']}" if env.get("DOJO_HOME") else ""
        return f"pid {pid} ({_short(_cmdline(pid) or [])}){home}"
    answer = _get(f"http://{host}:{port}/api/admin/settings", timeout)
    if answer and isinstance(answer[1], dict) and answer[1].get("home"):
        return f"a Prefect server with PREFECT_HOME {answer[1]['home']}"
    return "another process"


def server_check(cfg, data: dict | None = None, timeout: float = 2.0) -> tuple[bool, str]:
    """Whether this home's own server is up: the recorded server process is this home's (``check``), it holds
    the socket listening on the recorded port, and ``/api/health`` answers there. Returns (up, why)."""
    data = _load(cfg) if data is None else data
    if "server" not in data["processes"]:
        return False, f"no server recorded under {cfg.root}"
    verdict, text = check(cfg, data, "server")
    if verdict != "ours":
        return False, text
    pid, port = data["processes"]["server"]["pid"], server_port(cfg, data)
    if not _listeners(port, [pid]):
        return False, f"{text} is not listening on port {port}"
    answer = _get(api_url(cfg, port) + "/health", timeout)
    if not answer or answer[0] != 200:
        return False, f"{text} does not answer {api_url(cfg, port)}/health"
    return True, f"{text}, port {port}"


def healthy(cfg, timeout: float = 2.0) -> bool:
    """This home's server is up (not merely: something answers on the port)."""
    return server_check(cfg, timeout=timeout)[0]


def choose_port(cfg, data: dict) -> tuple[int, str | None]:
    """The port for this home's server, and a note when it is not ``pipeline.port``.

    The recorded port while this home's server process runs; else ``pipeline.port`` when free; else the recorded
    port, then the ports above ``pipeline.port``, whichever is free first. Never a port another server holds."""
    host, wanted = cfg.pipeline.host, cfg.pipeline.port
    if "server" in data["processes"] and check(cfg, data, "server")[0] == "ours":
        return server_port(cfg, data), None
    if _port_free(host, wanted):
        return wanted, None
    owner = port_owner(host, wanted) or "another process"
    last = min(wanted + PORT_SEARCH, 65535)
    for port in [server_port(cfg, data), *range(wanted + 1, last + 1)]:
        if port != wanted and _port_free(host, port):
            return port, f"port {wanted} is taken by {owner}; this home's server uses port {port}"
    raise RuntimeError(f"port {wanted} is taken by {owner} and ports {wanted + 1}-{last} are taken too; "
                       f"set pipeline.port to a free port")


# ---------------------------------------------------------------- starting
def _spawn(cfg, name: str, argv: list[str], env: dict, data: dict) -> int:
    """Start a process in its own session (so ``down`` can stop its whole group), logging to logs/NAME.log, and
    record its identity. A process of this home already recorded under ``name`` is kept."""
    if name in data["processes"] and check(cfg, data, name)[0] == "ours":
        return data["processes"][name]["pid"]
    _claim(cfg, data)
    logs = Path(cfg.root) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**env, "DOJO_HOME": home_of(cfg), "DOJO_STACK_TOKEN": data["token"]}
    with open(logs / f"{name}.log", "ab") as out:
        proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    # read after exec (Popen returns once it succeeded); empty when it already ended: such an entry is never signalled
    data["processes"][name] = {"pid": proc.pid, **(settled_identity(proc.pid) or {}), "argv": argv,
                               "api_url": env.get("PREFECT_API_URL"), "started": time.time(),
                               "log": str(logs / f"{name}.log")}
    _save(cfg, data)
    return proc.pid


def _prefect(env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([PREFECT, *args], env=env, cwd=REPO, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300)
    if check and done.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


# What `dojo up` sets on the server goes through the client in this process: a `prefect` CLI call costs ~6 s of
# start-up on a 2-core box, and `dojo up` used to make eight of them.
@contextlib.contextmanager
def client_of(env: dict):
    """A Prefect client of the server at ``env["PREFECT_API_URL"]`` (whatever this process's settings say)."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as c:
        yield c


def process_pool(env: dict, name: str, limit: int) -> None:
    """Create the process work pool ``name`` (or update it: its job template back to the default) with
    ``limit`` concurrent runs — `prefect work-pool create --type process --overwrite` + `set-concurrency-limit`."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    pool = WorkPoolCreate(name=name, type="process", concurrency_limit=limit,
                          base_job_template=ProcessWorker.get_default_base_job_template())
    with client_of(env) as c:
        c.create_work_pool(pool, overwrite=True)


def ensure_automation(env: dict, spec: dict) -> bool:
    """Create the automation ``spec`` unless one of its name exists. True when it was created."""
    from prefect.events.schemas.automations import AutomationCore

    with client_of(env) as c:
        if c.read_automations_by_name(spec["name"]):
            return False
        c.create_automation(AutomationCore.model_validate(spec))
    return True


def start_run(env: dict, deployment: str) -> str:
    """Start a run of ``deployment`` (not waited for); its name."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        return run_deployment(deployment, timeout=0, as_subflow=False).name


def background_limits(cfg, env: dict, log=print) -> list[str]:
    """One Prefect global concurrency limit of 1 slot per eval GPU, which spar/checkpoint occupies: one background
    job per eval GPU at a time (``dojo.gpu_gate.slot_names``). Created, or set back to 1, on the server at
    ``env["PREFECT_API_URL"]`` (in-process: a prefect CLI call per limit costs seconds)."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from dojo.gpu_gate import all_slot_names

    names = all_slot_names(cfg)
    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}), get_client(sync_client=True) as c:
        for name in names:
            c.upsert_global_concurrency_limit_by_name(name, 1)
    log(f"background jobs: one per eval GPU ({', '.join(names)})")
    return names


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


def start_oracle(cfg, env: dict, data: dict, wait: float = 120.0, log=print) -> str:
    """Start ``dojo serve`` (the Oracle, serve.host:serve.port) as this home's ``oracle`` process and wait until
    ``/health`` answers. The API key is made here, in the foreground, so ``dojo up`` prints a new one once (never
    into a log file). Returns the page's URL."""
    from dojo import oracle
    from dojo.oracle import auth

    key = auth.server_key(cfg.root, cfg.serve.host)      # a public bind without a key is refused here
    if key.created:
        log(f"created the Oracle's API key (shown once; stored in {key.source}, mode 0600):\n  {key.value}")
    pid = _spawn(cfg, "oracle", [sys.executable, "-m", "dojo.cli", "serve", "--host", cfg.serve.host,
                                 "--port", str(cfg.serve.port)], env, data)
    url = oracle.url(cfg)
    deadline = time.monotonic() + wait
    while (answer := _get(url + "health", 2.0)) is None or answer[0] != 200:
        if not alive(pid) or time.monotonic() > deadline:
            raise RuntimeError(f"the Oracle did not come up on {url} (is port {cfg.serve.port} taken? set "
                               f"serve.port); see {data['processes']['oracle']['log']}")
        time.sleep(0.5)
    log(f"oracle: {url} (API key from {key.source})")
    return url


def up(cfg, config_path: str | None = None, run: bool = True, wait: float = 120.0, log=print,
       workers: bool = True) -> dict:
    """Bring this home's stack up (idempotent: its running pieces are kept). Returns the stack record.
    ``workers=False`` (``dojo up --server-only``): the server, pools, deployments and automation for workers on
    other hosts (``dojo worker``); no local worker and no run."""
    data = _load(cfg)
    for name in list(data["processes"]):          # what this home cannot prove it started is forgotten, not signalled
        verdict, text = check(cfg, data, name)
        if verdict == "foreign":
            log(f"{text}; not signalled, entry removed")
        if verdict != "ours":
            del data["processes"][name]
    _claim(cfg, data)
    p = cfg.pipeline
    port, note = choose_port(cfg, data)
    if note:
        log(note)
    data.update(host=p.host, port=port)
    env = stack_env(cfg, config_path, port)
    for name in [n for n in data["processes"] if n != "server"]:
        if data["processes"][name].get("api_url") != env["PREFECT_API_URL"]:      # it talks to an older server
            _stop(cfg, data, name, grace=20.0)
            del data["processes"][name]
            log(f"stopped {name}: it was started for another server address")
    _save(cfg, data)
    Path(env["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    check_database(cfg)
    server = _spawn(cfg, "server", [PREFECT, "server", "start", "--host", p.host, "--port", str(port)],
                    server_env(cfg, env), data)
    deadline = time.monotonic() + wait
    while not (state := server_check(cfg, data))[0]:
        if not alive(server) or time.monotonic() > deadline:
            raise RuntimeError(f"this home's Prefect server did not become healthy ({state[1]}); "
                               f"see {data['processes']['server']['log']}")
        time.sleep(0.5)
    from dojo.config import redact_url

    log(f"server: {api_url(cfg, port)} (healthy; {state[1]}; database {redact_url(database_url(cfg))})")
    # the train pool runs one trainer (one per storage root in any case); the eval pool one run per eval worker
    for pool, limit in ((p.train_pool, 1), (p.eval_pool, p.eval_concurrency)):
        process_pool(env, pool, limit)
        if workers:
            _spawn(cfg, f"worker-{pool}", [PREFECT, "worker", "start", "--pool", pool, "--limit", "1",
                                           "--name", f"{pool}-worker"], env, data)
        log(f"pool {pool}: concurrency {limit}, " + ("worker started (--limit 1)" if workers else
                                                     "no local worker (start `dojo worker --pool " + pool + "`)"))
    _prefect(env, "--no-prompt", "deploy", "--all")
    log("deployments: train/continuous, evaluate/checkpoint, spar/checkpoint, curriculum/scheduled, maintenance/daily")
    background_limits(cfg, env, log)
    spec = zombie_automation(cfg)
    ensure_automation(env, spec)
    log(f"automation {spec['name']}: crash after {p.zombie_window_seconds}s without a heartbeat")
    if cfg.serve.enabled:
        data["oracle_url"] = start_oracle(cfg, env, data, wait, log)
    if run and workers:
        log(f"started train/continuous: flow run {start_run(env, 'train/continuous')}")
    data["api_url"] = api_url(cfg, port)
    data["ui_url"] = f"http://{p.host}:{port}"
    _save(cfg, data)
    log(f"Prefect UI: {data['ui_url']}")
    return data


# ---------------------------------------------------------------- stopping and looking
def down(cfg, log=print, grace: float = 20.0) -> list[str]:
    """Stop the processes this home's ``up`` started (their process groups), workers before the server.

    Every entry is checked first (``check``): one that is not provably this home's is never signalled; its entry
    is removed with the reason. Without a stack record nothing is written."""
    if not stack_file(cfg).exists():
        log(f"no stack recorded under {cfg.root}")
        return []
    data = _load(cfg)
    if not data["processes"]:
        log(f"no stack processes recorded under {cfg.root}")
        return []
    stopped = []
    for name in sorted(data["processes"], key=lambda n: n == "server"):          # server last
        verdict, text = check(cfg, data, name)
        if verdict == "ours":
            _stop(cfg, data, name, grace)
            stopped.append(text)
            log(f"stopped {text}")
        elif verdict == "gone":
            log(f"{text}; entry removed")
        else:
            log(f"{text}; not signalled, entry removed")
        del data["processes"][name]
    _save(cfg, data)
    return stopped


def status(cfg, log=print) -> dict:
    """What of this home's stack is running and where the training stands. Another home's server on the port
    is named as such; its pools, workers and runs are never shown as this home's."""
    from dojo import promotion, queue
    from skills import curriculum

    data = _load(cfg)
    up_, why = server_check(cfg, data)
    port = server_port(cfg, data)
    out = {"server": up_, "port": port, "processes": {}}
    if up_:
        log(f"server {api_url(cfg, port)}: healthy ({why})")
    else:
        log(f"server: no server of this home ({cfg.root}) is running: {why}")
        owner = port_owner(cfg.pipeline.host, port)
        if owner:
            log(f"  port {port} is held by {owner}, not by this home's stack; its pools, workers and runs are "
                f"not shown")
    for name in data["processes"]:
        verdict, text = check(cfg, data, name)
        out["processes"][name] = verdict == "ours"
        log(f"  {name}: " + {"ours": f"running ({text})", "gone": f"not running ({text})"}.get(
            verdict, f"{text} (not this home's; `dojo down` drops the entry)"))
    if up_:
        from prefect import get_client
        from prefect.client.schemas.sorting import FlowRunSort
        from prefect.settings import PREFECT_API_URL, temporary_settings

        # this home's server, whatever PREFECT_API_URL says or an earlier import of prefect fixed
        with temporary_settings(updates={PREFECT_API_URL: api_url(cfg, port)}), get_client(sync_client=True) as client:
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
    from dojo import mirror

    mirror.refresh(cfg, ["state/curriculum.json", *promotion.POINTERS], "")    # a URL root: the store's state
    state = curriculum.load(cfg.root, list(cfg.curriculum.skills))
    for skill, s in state["skills"].items():
        log(f"curriculum {skill}: mastered level {s['level']}, training level "
            f"{curriculum.training_level(state, skill)}, {len(s['history'])} evals")
    promoted = promotion.current(cfg.root)
    out["promoted"] = promoted["checkpoint"] if promoted else None
    log(f"promoted: {out['promoted'] or 'none yet'}" + (f" ({promoted['reason']})" if promoted else ""))
    if cfg.serve.enabled or "oracle" in data["processes"]:
        from dojo import oracle

        out["oracle"] = oracle.url(cfg)
        answer = _get(out["oracle"] + "health", 2.0)
        log(f"oracle: {out['oracle']} ({'answering' if answer and answer[0] == 200 else 'not answering'}; "
            f"API key in $DOJO_API_KEY or {Path(cfg.root) / 'state' / 'serve.key'})")
    from dojo.text import human_size
    from dojo.storage import usage

    out["usage"] = mirror.usage(cfg) if cfg.remote else usage(cfg.root)
    log(f"storage {cfg.remote or cfg.root}: {human_size(sum(out['usage'].values()))} — "
        + ", ".join(f"{folder} {human_size(n)}" for folder, n in sorted(out["usage"].items(), key=lambda kv: -kv[1])))
    return out
