"""Run one training chunk in this process, or as a K-process ``accelerate launch`` job (``train.processes``).

    run_chunk(cfg, FILE, steps)        # what `dojo train` and the pipeline's train_chunk task call

With ``train.processes`` 1 (and DDP) the chunk runs here (``model.train.train_chunk``). Otherwise this process
launches ``accelerate launch --num_processes K -m dojo.cli --config TMP train FILE --result-file R
--progress-lines`` and waits: the children get the resolved config (secrets included) in a private temporary
file, rank 0 prints one ``PROGRESS_PREFIX`` JSON line per logged step (handed to ``on_progress``) and writes the
chunk's result to ``R``; every other output line goes to ``on_output``. A failed job raises ``LaunchError`` with
the ranks' ``dojo: error`` lines and the tail of its output; an interrupted parent stops the job. A process that is itself a rank of a launched job
(``LOCAL_RANK`` is set) always trains in place, so the children never launch again.

accelerate's own ``--cpu`` launcher starts a single process, so K > 1 processes go through its torchrun
launcher (``--multi_gpu``) on a CPU box too: each rank then builds a CPU (gloo) process group. FSDP2 always goes
through ``--use_fsdp --fsdp_version 2``, one process included: accelerate builds FSDP only for a launched GPU job.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from dojo.config import Config

log = logging.getLogger("dojo.launch")

PROGRESS_PREFIX = "dojo-progress: "
TAIL_LINES = 40


class LaunchError(RuntimeError):
    """A K-process training job failed. ``summary``: its exit status and its ranks' ``dojo: error`` lines; the
    message adds the tail of its output."""

    def __init__(self, summary: str, tail: list[str]):
        super().__init__(f"{summary}\nits last {len(tail)} output lines:\n" + "\n".join(tail))
        self.summary = summary


def launched() -> bool:
    """Whether this process is a rank of a launched job (accelerate launch / torchrun set LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ


def needs_launch(cfg: Config) -> bool:
    return not launched() and (cfg.train.processes > 1 or cfg.train.distributed == "fsdp2")


def run_chunk(cfg: Config, data_file: str | Path, steps: int | None = None,
              on_progress: Callable[[dict], None] | None = None, sha256: str | None = None,
              on_output: Callable[[str], None] | None = None):
    """Train one chunk here, or as a ``train.processes``-process job (see the module docstring). Returns the
    ``model.train.ChunkResult`` either way."""
    if not needs_launch(cfg):
        from model.train import train_chunk

        return train_chunk(cfg, data_file, steps, on_progress, sha256)
    return launch_chunk(cfg, data_file, steps, on_progress, sha256, on_output)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _end_with_parent() -> None:
    """In the launched child before exec: SIGTERM it when this process dies, even by SIGKILL (a Prefect worker
    killing a cancelled or zombie flow run), so a training job is never left running without its flow; the
    launcher passes SIGTERM on to its ranks. Linux's prctl(PR_SET_PDEATHSIG); elsewhere nothing."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)      # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def launch_command(cfg: Config, config_file: Path, data_file: Path, result_file: Path, steps: int | None,
                   port: int) -> list[str]:
    k = cfg.train.processes
    mode = (["--use_fsdp", "--fsdp_version", "2"] if cfg.train.distributed == "fsdp2"
            else ["--multi_gpu"] if k > 1 else [])
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *mode, "--num_processes", str(k),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(port),
           "-m", "dojo.cli", "--config", str(config_file), "train", str(data_file),
           "--result-file", str(result_file), "--progress-lines"]
    return cmd + (["--steps", str(steps)] if steps is not None else [])


def launch_chunk(cfg: Config, data_file: str | Path, steps: int | None = None,
                 on_progress: Callable[[dict], None] | None = None, sha256: str | None = None,
                 on_output: Callable[[str], None] | None = None):
    """The K-process job: launch, stream, wait, read the result. ``sha256`` is not passed on: the children hash
    the file themselves (its content decides, and the tokenized cache is keyed by it)."""
    from model.train import ChunkResult

    data_file = Path(data_file).resolve()
    work = Path(tempfile.mkdtemp(prefix="dojo-launch-"))   # 0700: the config below may hold storage secrets
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    said: list[str] = []
    follow = 0
    proc = None
    try:
        config_file, result_file = work / "config.yaml", work / "result.json"
        fd = os.open(config_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:   # JSON is YAML; unredacted, unlike Config.to_dict
            json.dump(json.loads(json.dumps(dataclasses.asdict(cfg))), f)
        env = {k: v for k, v in os.environ.items() if k not in ("DOJO_HOME", "DOJO_CONFIG")}
        env["PYTHONUNBUFFERED"] = "1"
        cmd = launch_command(cfg, config_file, data_file, result_file, steps, free_port())
        log.info("launching a %d-process (%s) training chunk: %s", cfg.train.processes, cfg.train.distributed,
                 " ".join(cmd[1:]))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, encoding="utf-8", errors="replace", bufsize=1, env=env,
                                preexec_fn=_end_with_parent)
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith(PROGRESS_PREFIX):
                if on_progress:
                    on_progress(json.loads(line[len(PROGRESS_PREFIX):]))
                continue
            tail.append(line)
            if line.startswith("dojo: "):   # a rank's error (dojo.cli main) and the lines that continue it
                follow = 0 if line in said else 4
                if follow and len(said) < 20:
                    said.append(line)
            elif follow and line.startswith((" ", "\t")) and line.strip() and len(said) < 20:   # its detail lines
                said.append(line)
                follow -= 1
            else:
                follow = 0
            if on_output:
                on_output(line)
        rc = proc.wait()
        if rc != 0 or not result_file.is_file():
            raise LaunchError(f"the {cfg.train.processes}-process training chunk on {data_file} failed (exit status "
                              f"{rc}{'' if rc else ', no result written'})" + "".join(f"\n{line}" for line in said),
                              list(tail))
        r = json.loads(result_file.read_text(encoding="utf-8"))
        return ChunkResult(**(r | {"checkpoint": Path(r["checkpoint"])}))
    finally:
        if proc is not None and proc.poll() is None:   # the parent was interrupted: stop the job, do not orphan it
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def result_json(result) -> str:
    """A ``ChunkResult`` as the JSON ``launch_chunk`` reads back."""
    return json.dumps(dataclasses.asdict(result) | {"checkpoint": str(result.checkpoint)})
