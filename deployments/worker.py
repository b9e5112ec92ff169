"""``dojo worker``: a foreground Prefect worker for one work pool, on any host, against a Prefect server that may
run elsewhere (``dojo up --server-only`` on the central box; docs/operations.md, Two boxes).

    dojo worker --pool dojo-eval [--gpus 1] [--api-url http://box-a:4200/api] [--name NAME]

The server is ``--api-url``, else ``$PREFECT_API_URL``, else this home's own ``dojo up`` server. Before it starts
the worker checks that the server answers and that the pool exists there (a typo would otherwise create a stray
pool no deployment uses), then replaces itself (exec) with ``python -m deployments.worker``: one process, so
Ctrl-C, SIGTERM and a process supervisor reach the worker itself.

The worker gets the environment the stack's workers get (``stack.stack_env``: heartbeats every
``pipeline.heartbeat_seconds``, so the zombie automation can tell a dead run, ``DOJO_REPO``, ``DOJO_CONFIG``,
``DOJO_HOME`` when set), and runs one flow run at a time (``--limit 1``: one run per GPU set). The deployments'
pull step changes into the checkout path of the box that deployed them (``prefect deploy`` resolves
``{{ $DOJO_REPO }}`` then), so every worker host keeps its checkout at that same path.

GPUs: the deployments in prefect.yaml set ``CUDA_VISIBLE_DEVICES`` in their job variables from the deploying box's
``pipeline.*_gpus``, and Prefect's process worker lays job variables over its own environment, so a plain
``prefect worker start`` cannot choose its GPUs. ``--gpus`` can: this worker sets ``CUDA_VISIBLE_DEVICES`` on each
flow run's configuration after Prefect merged it, just before the run's process starts, so on this host the
worker's GPUs win over the deployment's and over a per-run job variable. Without ``--gpus`` the deployment's value
stands.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
import warnings

from deployments import stack

GPUS_RE = re.compile(r"(\d+|GPU-[0-9A-Fa-f-]+|MIG-[\w/-]+)(,(\d+|GPU-[0-9A-Fa-f-]+|MIG-[\w/-]+))*")


def check_gpus(gpus: str | None) -> str | None:
    """``--gpus`` as CUDA_VISIBLE_DEVICES takes it: comma-separated indices or GPU-/MIG- UUIDs; ValueError else."""
    if gpus is None:
        return None
    gpus = gpus.replace(" ", "")
    if not GPUS_RE.fullmatch(gpus):
        raise ValueError(f"--gpus {gpus!r} is not allowed; use comma-separated GPU indices such as 0 or 0,1 (or "
                         f"GPU-… UUIDs, as nvidia-smi -L prints them)")
    return gpus


def resolve_api_url(cfg, api_url: str | None) -> str:
    """The server this worker talks to: ``--api-url``, else $PREFECT_API_URL, else this home's ``dojo up`` server."""
    url = (api_url or os.environ.get("PREFECT_API_URL") or "").strip()
    if not url:
        up_, _ = stack.server_check(cfg)
        if not up_:
            raise RuntimeError("no Prefect server given: pass --api-url http://SERVER:4200/api or set PREFECT_API_URL "
                               "(the central box runs `dojo up --server-only`)")
        url = stack.api_url(cfg)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"Prefect API URL {url!r} is not allowed; use http://HOST:PORT/api")
    return url.rstrip("/")


def check_server(api_url: str, pool: str, timeout: float = 10.0) -> dict:
    """The pool as the server at ``api_url`` describes it; RuntimeError naming the address when no Prefect server
    answers there or the pool does not exist (or is not a process pool)."""
    answer = stack._get(f"{api_url}/health", timeout)
    if not answer or answer[0] != 200:
        why = "nothing answers" if not answer else f"HTTP {answer[0]}"
        raise RuntimeError(f"no Prefect server answers at {api_url} ({why}): start it on the central box (dojo up "
                           f"--server-only), and check --api-url / PREFECT_API_URL and that its port is open to "
                           f"this host")
    request = urllib.request.Request(f"{api_url}/work_pools/{urllib.parse.quote(pool, safe='')}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            found = json.loads(r.read(1 << 20))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise RuntimeError(f"work pool {pool!r} does not exist on the server at {api_url}; `dojo up` (or "
                               f"--server-only) creates pipeline.train_pool and pipeline.eval_pool — check the "
                               f"name") from None
        raise RuntimeError(f"the server at {api_url} refused to describe work pool {pool!r}: HTTP {exc.code}") \
            from None
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"the server at {api_url} did not describe work pool {pool!r}: {exc}") from None
    if found.get("type") != "process":
        raise RuntimeError(f"work pool {pool!r} on {api_url} is a {found.get('type')!r} pool; dojo's pools are "
                           f"process pools")
    return found


def worker_name(pool: str, gpus: str | None) -> str:
    """``POOL@HOST`` (+ ``-gpu0_1``): two workers with one name count as one in Prefect, so the GPUs are in it."""
    name = f"{pool}@{socket.gethostname()}" + (f"-gpu{gpus.replace(',', '_')}" if gpus else "")
    return name.replace("/", "_").replace("%", "_")


def worker_env(cfg, config_path: str | None, api_url: str, gpus: str | None) -> dict:
    """The stack's worker environment (``stack.stack_env``), pointed at ``api_url``; no server database here."""
    env = stack.stack_env(cfg, config_path, cfg.pipeline.port)
    env.pop("PREFECT_SERVER_DATABASE_CONNECTION_URL", None)
    env["PREFECT_API_URL"] = api_url
    if os.environ.get("DOJO_HOME", "").strip():
        env["DOJO_HOME"] = os.environ["DOJO_HOME"]
    else:
        env.pop("DOJO_HOME", None)      # the flows resolve storage.root from the config, as on every other host
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpus          # this process's own view; runs get it from the worker (run())
        env["DOJO_WORKER_GPUS"] = gpus
    return env


def start(cfg, config_path: str | None, pool: str, gpus: str | None = None, api_url: str | None = None,
          name: str | None = None, log=print) -> None:
    """Check, then become the worker (never returns: exec). RuntimeError when no server or no such pool."""
    gpus = check_gpus(gpus)
    url = resolve_api_url(cfg, api_url)
    check_server(url, pool)
    name = name or worker_name(pool, gpus)
    argv = [sys.executable, "-m", "deployments.worker", "--pool", pool, "--name", name]
    if gpus is not None:
        argv += ["--gpus", gpus]
    log(f"worker {name}: pool {pool} on {url}, "
        + (f"CUDA_VISIBLE_DEVICES={gpus} for its runs" if gpus is not None else "GPUs as the deployments set them")
        + f", one run at a time, heartbeat every {cfg.pipeline.heartbeat_seconds}s")
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(stack.REPO)
    os.execve(sys.executable, argv, worker_env(cfg, config_path, url, gpus))


# ---------------------------------------------------------------- the worker process (python -m deployments.worker)
def _worker_class():
    from prefect.workers.process import ProcessWorker

    class GpuProcessWorker(ProcessWorker):
        """Prefect's process worker whose ``gpus`` (when given) become every run's CUDA_VISIBLE_DEVICES, after the
        deployment's and the run's job variables were merged (the last word, on this host)."""

        type = "process"

        def __init__(self, *args, gpus: str | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.gpus = gpus

        async def run(self, flow_run, configuration, task_status=None):
            if self.gpus is not None:
                configuration.env["CUDA_VISIBLE_DEVICES"] = self.gpus
            return await super().run(flow_run, configuration, task_status)

    return GpuProcessWorker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--pool", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--gpus")
    args = parser.parse_args(argv)
    from prefect.settings import PREFECT_WORKER_HEARTBEAT_SECONDS

    with warnings.catch_warnings():          # our subclass takes the "process" type in this process's registry
        warnings.simplefilter("ignore")
        cls = _worker_class()
    # SIGTERM (systemd, kill, dojo's tests) stops it as Ctrl-C does: asyncio.run cancels the worker, which says
    # goodbye to the server. (Prefect's own handler forwards a signal to the worker's PID — here, itself — and
    # leaves the worker polling until a second signal kills it.)
    signal.signal(signal.SIGINT, signal.default_int_handler)      # also when started with SIGINT ignored (nohup, &)
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    worker = cls(work_pool_name=args.pool, name=args.name, limit=1, create_pool_if_not_found=False,
                 heartbeat_interval_seconds=int(PREFECT_WORKER_HEARTBEAT_SECONDS.value()), gpus=check_gpus(args.gpus))
    try:
        asyncio.run(worker.start(printer=print))
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    print(f"worker {args.name} stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
