"""The one training loop: train one chunk on one data file, from the latest checkpoint (or the base model),
and write a new checkpoint with its ledger.

    dojo train FILE [--steps N]

Exact resume: a chunk restores weights, optimizer, LR schedule, global step, RNG and the position in the data
(when the file is the one the previous chunk was reading), so two chunks of N steps equal one chunk of 2N steps.

Data path (``model/data.py``): the file's tokenized cache entry — written by the gate when it queued the file,
or built here by the gate's own STANDARD check, strict (a bad line refuses the file) — then a few examples held
out for validation loss (by content hash, the same ones every chunk), best-fit-decreasing packing, and the
masking validators on the real packed rows (a structural fault refuses to train; the plan and the verdict are
cached with the entry). Rows are built on demand from the memory-mapped examples, in a seeded order, epoch
after epoch.

More than one process (``accelerate launch --num_processes K -m dojo.cli train FILE``, or ``train.processes``
in the pipeline; docs/training.md "More than one GPU"): every rank chooses the same rows for a step
(micro_batch x grad_accum x K of them) and trains its own contiguous share; the loss is divided by the step's
global trained-token count (counted on the host from all the step's rows, so no collective is needed for it),
so the gradient — and the reported loss — equal one process training the same rows with grad_accum x K. Rank 0
alone takes the locks, logs, writes the checkpoint and the ledger; the others wait for it and return the same
path. ``train.distributed: fsdp2`` shards parameters, gradients and optimizer state (FSDP2) instead of
replicating them (DDP).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from dojo import mirror
from dojo.config import Config
from dojo.sidecar import read_sidecar
from model import checkpoint as ckpt
from model.chat import IGNORE
from model.data import PreparedData, prepare
from model.profiles import resolve as resolve_profile
from model.loading import (adapter_base, add_lora, apply_liger, cpu_threads, load_model, load_tokenizer,
                           pick_runtime)
from model.optimizers import build as build_optimizers
from model.packing import PackedRow, collate
from validation.masking import require_ok
from validation.model_dir import refuse_pickle_weights

log = logging.getLogger("dojo.train")


@dataclass(frozen=True)
class ChunkResult:
    checkpoint: Path
    step: int                 # global step after the chunk
    steps: int                # optimizer steps run in this chunk
    train_loss: float         # token-weighted mean over the chunk
    val_loss: float | None
    examples_trained: int
    tokens_trained: int
    seconds: float


class RowStream:
    """Rows in a seeded order, epoch after epoch; (epoch, offset) is the resumable position."""

    def __init__(self, n_rows: int, seed: int, epoch: int = 0, offset: int = 0):
        self.n, self.seed, self.epoch, self.offset = n_rows, seed, epoch, offset
        self._order = self._perm(epoch)

    def _perm(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.offset == self.n:
                self.epoch, self.offset = self.epoch + 1, 0
                self._order = self._perm(self.epoch)
            out.append(self._order[self.offset])
            self.offset += 1
        return out


# ---------------------------------------------------------------- optimization
def lr_factor(train_cfg) -> Callable[[int], float]:
    """Linear warm-up, then constant or cosine/linear decay to ``min_lr_ratio`` at ``total_steps``."""
    warmup, total, floor, kind = (train_cfg.warmup_steps, train_cfg.total_steps, train_cfg.min_lr_ratio,
                                  train_cfg.schedule)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress
        return floor + (1.0 - floor) * shape

    return factor


def row_trained_tokens(row: PackedRow) -> int:
    """``trained_tokens`` of one packed row, counted from its host-side labels without collating it."""
    return sum(1 for label in row.labels[1:] if label != IGNORE)


def trained_tokens(labels: torch.Tensor) -> int:
    """Tokens the loss is computed on (labels[:, 1:] that are not IGNORE). Call it on the CPU labels, before the
    copy to the device: on a GPU, reading a count back is a host sync."""
    return int((labels[:, 1:] != IGNORE).sum())


def summed_loss(model, batch: dict[str, torch.Tensor], fused: bool = False) -> torch.Tensor:
    """Summed next-token cross-entropy over the trained tokens of a packed batch (a 0-d tensor on the device).

    ``fused`` (Liger on CUDA): the model computes the loss from labels with the fused linear cross-entropy, so
    the (B, T, V) logits are never materialised; ``num_items_in_batch=1`` makes its reduction a plain sum.
    """
    if fused:
        return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"],
                     use_cache=False, num_items_in_batch=1).loss
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    logits = out.logits[:, :-1, :]                      # (B, T-1, V)
    targets = batch["labels"][:, 1:]                    # (B, T-1)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


def loss_sum(model, batch: dict[str, torch.Tensor], fused: bool = False) -> tuple[torch.Tensor, int]:
    """``summed_loss`` and how many tokens it covers (evaluation and tests; the training step counts on the CPU)."""
    return summed_loss(model, batch, fused), trained_tokens(batch["labels"])


@torch.no_grad()
def evaluate_loss(model, rows: list[PackedRow], pad_id: int, batch_size: int, device: str) -> float | None:
    if not rows:
        return None
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), device=device), 0
    for i in range(0, len(rows), batch_size):
        cpu = collate(rows[i:i + batch_size], pad_id)
        count += trained_tokens(cpu["labels"])
        total += summed_loss(model, {k: v.to(device) for k, v in cpu.items()}).float()
    model.train(was_training)
    return float(total) / max(1, count)


# ---------------------------------------------------------------- the step
@dataclass
class StepBatch:
    """One optimizer step's data, collated on the host: its micro-batches (CPU tensors, pinned for a CUDA copy)
    and the counts the loop needs, taken here so the hot loop never reads a number back from the device."""
    micro: list[dict[str, torch.Tensor]]   # this process's share of the step
    tokens: int           # trained tokens over the whole step, all processes (the loss is their token-weighted mean)
    examples: int         # over the whole step, all processes
    row_tokens: int       # real tokens in the step's rows, all processes (throughput)


def make_step_batch(rows: list[PackedRow], micro_batch_size: int, pad_id: int, width: int | None = None,
                    pin: bool = False, rank: int = 0, processes: int = 1) -> StepBatch:
    """Collate a step's rows into micro-batches of ``micro_batch_size`` rows (padded to ``width`` when given:
    flex_attention compiles for one shape). With ``processes`` > 1, ``rows`` are the whole step's rows and this
    process (``rank``) collates only its contiguous share — the very micro-batches one process would train in
    that place — while the counts cover every share."""
    share = len(rows) // processes
    assert share * processes == len(rows), f"{len(rows)} rows do not split into {processes} equal shares"
    mine = rows[rank * share:(rank + 1) * share]
    micro = [collate(mine[k:k + micro_batch_size], pad_id, width) for k in range(0, len(mine), micro_batch_size)]
    if pin:
        micro = [{k: v.pin_memory() for k, v in m.items()} for m in micro]
    return StepBatch(micro, sum(row_trained_tokens(r) for r in rows), sum(len(r.examples) for r in rows),
                     sum(len(r) for r in rows))


def prefetch(make: Callable[[object], StepBatch], plans: list, depth: int = 2):
    """Yield ``make(plan)`` for each plan, built ``depth`` steps ahead in a background thread, so collation (and
    pinning) overlaps the model's compute. An error in the thread is raised here; leaving the loop early stops it."""
    import queue
    import threading

    out: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def hand(item) -> bool:
        """Put ``item`` for the consumer unless it has left (then False): a producer never blocks for good."""
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for plan in plans:
                if not hand(make(plan)):
                    return
            hand(done)
        except BaseException as exc:   # handed to the consumer, which raises it
            hand(exc)

    thread = threading.Thread(target=work, name="dojo-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(5)


def train_step(model, step: StepBatch, optimizers, schedulers, accelerator, *, fused: bool = False,
               max_grad_norm: float = 1.0) -> torch.Tensor:
    """One optimizer step of dojo's training loop — ``dojo train`` and the benchmark's dojo column both run it.

    Each micro-batch is copied to the device (``non_blocking``: pinned host memory on CUDA), its summed loss is
    divided by the step's trained tokens (counted on the host, so the result does not depend on how a step is
    split into micro-batches) and back-propagated through accelerate; then gradient clipping, every optimizer
    and scheduler step. Returns this process's summed loss as a device tensor: nothing here waits for the device.

    With K processes (DDP or FSDP2) ``step.tokens`` counts the whole step, and the loss is multiplied by K
    because the gradient reduction averages over the processes: the reduced gradient is then the sum over all
    the step's rows divided by their tokens — one process's gradient. Only the last micro-batch's backward
    reduces (``no_sync`` before it), once per step.
    """
    device = accelerator.device
    total = torch.zeros((), device=device)
    processes, last = accelerator.num_processes, len(step.micro) - 1
    for i, cpu in enumerate(step.micro):
        batch = {k: v.to(device, non_blocking=True) for k, v in cpu.items()}
        with contextlib.nullcontext() if i == last or processes == 1 else accelerator.no_sync(model):
            s = summed_loss(model, batch, fused)
            accelerator.backward(s * processes / max(1, step.tokens))
        total += s.detach().float()
    if max_grad_norm > 0:
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    for o, sc in zip(optimizers, schedulers):
        o.step()
        sc.step()
        o.zero_grad(set_to_none=True)
    return total


def decoder_layers(model) -> list[torch.nn.Module]:
    return [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]


def prepare_model_for_training(model, checkpointing: bool, compile_layers: bool):
    """Gradient checkpointing (non-reentrant), regional ``torch.compile`` of each decoder layer, no KV cache,
    train mode. The benchmark's dojo column calls this too."""
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if compile_layers:   # regional: each decoder layer compiles once and is reused by every layer of its shape
        for layer in decoder_layers(model):
            layer.compile()
    model.config.use_cache = False
    model.train()
    return model


def world() -> tuple[int, int]:
    """(rank, number of processes) as ``accelerate launch`` (torchrun) set them in the environment; (0, 1) when
    this process was started alone. Read before the process group exists (the locks are rank 0's)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def fsdp2_plugin():
    """accelerate's FSDP2 plugin for dojo: each decoder layer (and the root) sharded with ``fully_shard``,
    parameters resharded after forward, full state dicts for saving (gathered to rank 0; offloaded to the CPU)."""
    from accelerate import FullyShardedDataParallelPlugin

    return FullyShardedDataParallelPlugin(fsdp_version=2, reshard_after_forward=True,
                                          auto_wrap_policy="transformer_based_wrap",
                                          state_dict_type="FULL_STATE_DICT", cpu_ram_efficient_loading=False,
                                          activation_checkpointing=False)


def make_accelerator(runtime, distributed: str = "ddp"):
    """The accelerate ``Accelerator`` for this process: plain (one process), DDP (``accelerate launch`` with K
    processes), or FSDP2 (``distributed="fsdp2"``, which needs a launched process: accelerate builds FSDP only for
    a distributed GPU run, never on the CPU)."""
    from accelerate import Accelerator

    if distributed != "fsdp2":
        return Accelerator(cpu=runtime.device == "cpu", mixed_precision="no")
    if runtime.device != "cuda":
        raise ValueError(f"train.distributed is fsdp2, which needs CUDA GPUs (accelerate builds FSDP only for a GPU "
                         f"job), but this process trains on {runtime.device}; set train.distributed: ddp here")
    if "LOCAL_RANK" not in os.environ:
        raise ValueError("train.distributed is fsdp2, which needs a launched process (accelerate builds FSDP only "
                         "for a launched job, one process included): `dojo train` and the pipeline launch it, or run "
                         "`accelerate launch --use_fsdp --fsdp_version 2 --num_processes K -m dojo.cli train FILE`")
    return Accelerator(mixed_precision="no", fsdp_plugin=fsdp2_plugin())


def make_schedulers(optimizers, train_cfg) -> list:
    return [torch.optim.lr_scheduler.LambdaLR(o, lr_factor(train_cfg)) for o in optimizers]


def follow_config_rates(schedulers, peaks: list[list[float]]) -> list[tuple[float, float]]:
    """After a resume: the schedule's peak rates become this chunk's config's (``peaks``: each scheduler's
    ``base_lrs`` as built from ``train.learning_rate`` / ``muon_lr``, which a plateau may have scaled), at the
    resumed position in the schedule. The optimizer and scheduler state would otherwise bring back the parent's
    rates and silently ignore a changed config. Unchanged rates give the same floats, so an exact resume stays
    exact. Returns (old, new) peak pairs that changed."""
    changed = []
    for sc, peak in zip(schedulers, peaks):
        changed += [(old, new) for old, new in zip(sc.base_lrs, peak) if old != new]
        sc.base_lrs = list(peak)
        for group, base, factor in zip(sc.optimizer.param_groups, peak, sc.lr_lambdas):
            group["initial_lr"], group["lr"] = base, base * factor(sc.last_epoch)
        sc._last_lr = [group["lr"] for group in sc.optimizer.param_groups]
    return changed


# ---------------------------------------------------------------- RNG state
def rng_state(device: str) -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def saved_rng_states(state: dict) -> list[dict]:
    """The per-process RNG states of a checkpoint's ``rng`` entry: ``{"ranks": [...]}`` written by K > 1
    processes, or one process's state (a single-process run, and every checkpoint from before)."""
    return list(state["ranks"]) if "ranks" in state else [state]


# ---------------------------------------------------------------- processes
def share_from_main(value):
    """Rank 0's ``value`` on every process (a broadcast: every rank waits for rank 0 here)."""
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def optimizer_states(accelerator, model, optimizers, mode: str) -> list[dict]:
    """Every optimizer's state dict as one process would write it. FSDP2: the full (unsharded) state, gathered
    from the shards to CPU memory (a collective), so the checkpoint does not depend on the process count."""
    if mode != "fsdp2":
        return [o.state_dict() for o in optimizers]
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return [get_optimizer_state_dict(model, o.optimizer, options=options) for o in optimizers]


def load_sharded_optimizers(model, optimizers, states: list[dict]) -> None:
    """Load full, name-keyed optimizer states (``optimizer_states`` of an FSDP2 chunk) into the sharded
    optimizers after ``accelerator.prepare``: each rank keeps its shard of every moment."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    for o, st in zip(optimizers, states):
        set_optimizer_state_dict(model, o.optimizer, optim_state_dict=st, options=options)


def tied_duplicates(model, fsdp2: bool = False) -> set[str]:
    """Parameter names that are another name's very tensor (tied embeddings: ``lm_head.weight``), which a saved
    checkpoint holds once. For FSDP2 the tie must be real: accelerate maps the parameters by name when it shards
    them, and a model whose config ties the embeddings but whose weights are two tensors fails there with a bare
    KeyError (accelerate issue 3870) — so the tie is re-applied, and refused with a reason when it cannot be."""
    def duplicates() -> set[str]:
        seen, dups = set(), set()
        for name, p in model.named_parameters(remove_duplicate=False):
            if id(p) in seen:
                dups.add(name)
            seen.add(id(p))
        return dups

    dups = duplicates()
    if fsdp2 and getattr(model.config, "tie_word_embeddings", False) and not dups:
        model.tie_weights()
        dups = duplicates()
        if not dups:
            raise ValueError("the model's config.json says tie_word_embeddings: true, but its input and output "
                             "embeddings are separate tensors, which FSDP2 cannot shard (accelerate issue 3870); set "
                             "tie_word_embeddings to false in the model's config.json if the weights really differ")
    return dups


# ---------------------------------------------------------------- the chunk
def model_identity(name_or_path: str) -> dict:
    """What a lineage was started from: the name, and for a local directory the hash of its config.json."""
    config = Path(name_or_path) / "config.json"
    return {"name": str(name_or_path), "config_sha256": ckpt.sha256_file(config) if config.is_file() else None}


def check_same_base(parent: Path, parent_ledger: dict, cfg: Config) -> None:
    """Refuse to continue a lineage whose base model differs from the configured one."""
    recorded = parent_ledger.get("base_model_identity") or {}
    current = model_identity(cfg.model.name_or_path)
    same = (recorded.get("config_sha256") == current["config_sha256"] if current["config_sha256"]
            else recorded.get("name") == current["name"])
    if recorded and not same:
        raise ValueError(f"config model.name_or_path is {current['name']}, but the checkpoints under "
                         f"{cfg.root / 'checkpoints'} (latest {parent.name}) were trained from {recorded.get('name')}; "
                         f"use another DOJO_HOME for a new base model, or set model.name_or_path back")


def memory_plan(cfg: Config, runtime, source) -> tuple[bool, str]:
    """Gradient checkpointing on or off, and why (``model.gradient_checkpointing``: true, false or auto — see
    ``model.vram.choose_checkpointing``); on CUDA also the VRAM preflight: refuse, with the numbers, a configuration
    that cannot fit the detected GPU — before an hour of training ends in an out-of-memory error. Sizes the latest
    checkpoint's model (or the base model): ``source``."""
    from model import vram

    setting = cfg.model.gradient_checkpointing
    if runtime.device != "cuda":
        return vram.choose_checkpointing(setting, runtime.device)
    base = adapter_base(source) if Path(str(source)).is_dir() else None
    kwargs = dict(dtype=runtime.dtype, lora=cfg.model.lora, lora_rank=cfg.model.lora_rank, liger=runtime.liger,
                  attention=runtime.attn_implementation)
    try:
        config = vram.load_config(base or source)
        vram.parameter_counts(config)
    except ValueError as exc:   # not a Qwen3 the estimator knows: say so, do not block training
        log.warning("VRAM preflight skipped: %s", exc)
        return vram.choose_checkpointing(setting, runtime.device)
    shape = (config, cfg.data.max_length, cfg.train.micro_batch_size, cfg.train.optimizer)
    gpu_bytes = vram.detect_gpu_bytes() or torch.cuda.get_device_properties(0).total_memory   # NVML, else CUDA
    checkpointing, why = vram.choose_checkpointing(setting, runtime.device, *shape, gpu_bytes=gpu_bytes, **kwargs)
    est = vram.preflight(*shape, gpu_bytes=gpu_bytes, gradient_checkpointing=checkpointing, **kwargs)
    log.info("VRAM preflight: about %.1f GiB on the GPU", est.resident_bytes / 2**30)
    return checkpointing, why


def train_chunk(cfg: Config, data_file: str | Path, steps: int | None = None,
                on_progress: Callable[[dict], None] | None = None, sha256: str | None = None) -> ChunkResult:
    """Train one chunk on ``data_file`` and write a checkpoint under ``cfg.root``. See the module docstring.

    Only one chunk trains per storage root at a time (an flock under ``state/``): two would fork the lineage.
    Under ``accelerate launch`` rank 0 holds the lock, the lease and the tracker run for the whole job, and
    only rank 0 calls ``on_progress``; every rank returns the same result.
    """
    from dojo.storage import exclusive_lock
    from model import trackers

    if world()[0] != 0:
        logging.getLogger("dojo").setLevel(logging.WARNING)   # rank 0 tells the story; the others only warn
        return _train_chunk(cfg, Path(data_file), steps, None, sha256)
    with exclusive_lock(cfg.root / "state" / "train.lock", "a training chunk"), \
            mirror.exclusive_lease(cfg, "train", "a training chunk"), trackers.lineage_run(cfg) as run:
        def progress(p: dict) -> None:
            if run is not None:   # train.report_to: per step and per chunk, into the lineage's one run
                run.log(trackers.step_values(p), p["step"])
            if on_progress:
                on_progress(p)

        result = _train_chunk(cfg, Path(data_file), steps, progress, sha256)
        if run is not None:
            run.log(trackers.chunk_values(result), result.step)
        return result


def _train_chunk(cfg: Config, data_file: Path, steps: int | None,
                 on_progress: Callable[[dict], None] | None, sha256: str | None) -> ChunkResult:
    started = time.monotonic()
    if steps is not None and steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    runtime = pick_runtime(cfg.model.dtype, cfg.model.attn_implementation, cfg.model.liger)
    cpu_threads(cfg, runtime)
    t = cfg.train
    accelerator = make_accelerator(runtime, t.distributed)   # joins the process group under accelerate launch
    processes, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    mode = t.distributed if processes > 1 or t.distributed == "fsdp2" else "none"
    # the newest valid (URL root: committed) checkpoint; rank 0 looks (it may set broken ones aside), all follow
    parent = ckpt.latest(cfg, set_aside=True) if main else None
    if processes > 1:
        parent = share_from_main(parent)
    source = parent or cfg.model.name_or_path
    checkpointing, checkpointing_why = memory_plan(cfg, runtime, source)
    log.info("gradient checkpointing %s: %s", "on" if checkpointing else "off", checkpointing_why)
    if runtime.liger:
        apply_liger()
    refuse_pickle_weights(source)                # before the tokenizer, the data or any loader touches it
    parent_ledger = ckpt.read_ledger(parent) if parent else {}
    if parent:
        check_same_base(parent, parent_ledger, cfg)
    log.info("chunk on %s, starting from %s (%d process%s, %s)", data_file, source, processes,
             "" if processes == 1 else "es", mode)

    tokenizer = load_tokenizer(source, cfg.model.trust_remote_code)
    profile, system_prompt = resolve_profile(cfg.data.profile, cfg.data.system_prompt)
    log.info("profile %s, system prompt: %r", profile.name, system_prompt)
    with accelerator.main_process_first():   # rank 0 builds the tokenized cache entry, the others read it
        data: PreparedData = prepare(cfg, data_file, tokenizer, sha256)
    file_sha = data.data.meta["sha256"]
    require_ok(data.masking)
    for warning in data.masking.warnings:
        log.warning("masking: %s", warning)
    log.info("%d examples (+%d held out) in %d rows, fill %.1f%%, masked %.1f%%, %d turn(s) rewritten by the "
             "template", data.examples, data.val_examples, data.n_rows, 100 * data.fill_ratio,
             100 * data.masking.masked_ratio, data.rewritten_turns)

    model = load_model(source, runtime, cfg.model.trust_remote_code,
                       init="pretrained" if parent else cfg.model.init, seed=cfg.train.seed)
    is_adapter = adapter_base(source) is not None
    if is_adapter and not cfg.model.lora:
        raise ValueError(f"the latest checkpoint {Path(source).name} is a LoRA adapter but config model.lora is "
                         f"false; set model.lora: true to keep training it, or merge it (dojo merge) into a new base")
    if cfg.model.lora and not is_adapter:
        model = add_lora(model, cfg.model)
    model = prepare_model_for_training(model, checkpointing, cfg.model.compile)
    optimizers, split = build_optimizers(model, t, runtime.device)
    schedulers = make_schedulers(optimizers, t)
    peaks = [list(sc.base_lrs) for sc in schedulers]      # this config's rates; a resume keeps them (below)

    global_step, epoch, offset = parent_ledger.get("step", 0), 0, 0
    saved_opts = None
    resumed = bool(parent) and ckpt.has_training_state(parent)      # optimizer and schedule come from the parent
    if resumed:
        state_dir = parent / ckpt.STATE_DIR
        saved_opts, saved_scheds = ckpt.load_state(state_dir, "optimizer"), ckpt.load_state(state_dir, "scheduler")
        if len(saved_opts) != len(optimizers) or parent_ledger.get("runtime", {}).get("optimizer") != t.optimizer:
            raise ValueError(f"config train.optimizer is {t.optimizer}, but {parent.name} was trained with "
                             f"{parent_ledger.get('runtime', {}).get('optimizer')}; its optimizer state cannot be "
                             f"resumed (use another DOJO_HOME, or set train.optimizer back)")
        # FSDP2 checkpoints hold full optimizer states keyed by parameter name (loaded into the shards after
        # prepare, below); the others torch's own per-index states. Between the two, the optimizer restarts.
        parent_mode = parent_ledger.get("distributed", {}).get("mode", "none")
        if (parent_mode == "fsdp2") != (mode == "fsdp2"):
            log.warning("%s was trained with %s, this chunk runs %s: its optimizer state is kept in another layout, "
                        "so AdamW restarts (weights, schedule, step and data position resume)", parent.name,
                        parent_mode, mode)
            saved_opts = None
        elif mode != "fsdp2":
            for o, st in zip(optimizers, saved_opts):
                o.load_state_dict(st)
        for sc, st in zip(schedulers, saved_scheds):
            sc.load_state_dict(st)
        trainer = ckpt.read_trainer_state(parent)
        rngs = saved_rng_states(ckpt.load_state(state_dir, "rng"))
        if len(rngs) != processes:
            log.warning("%s was trained by %d process(es), this chunk runs %d: weights, optimizer, schedule, step "
                        "and data position resume exactly, but RNG continuity is lost (each process is seeded "
                        "from train.seed, the step and its rank)", parent.name, len(rngs), processes)
            torch.manual_seed(t.seed + global_step + rank)
            random.seed(t.seed + global_step + rank)
        else:
            set_rng_state(rngs[rank])
        if trainer["data"]["sha256"] == file_sha:
            epoch, offset = trainer["data"]["epoch"], trainer["data"]["offset"]
            log.info("resuming inside %s at epoch %d, row %d", data_file.name, epoch, offset)
    else:
        if parent:
            log.warning("%s has no optimizer state: weights resume, optimizer and schedule start fresh", parent.name)
        torch.manual_seed(t.seed + rank)
        random.seed(t.seed + rank)

    tied = tied_duplicates(model, mode == "fsdp2")
    model, *optimizers = accelerator.prepare(model, *optimizers)
    if mode == "fsdp2" and saved_opts is not None:
        load_sharded_optimizers(model, optimizers, saved_opts)
    if resumed:                                           # the schedule resumed: at this config's rates
        for old, new in follow_config_rates(schedulers, peaks):
            log.info("learning rate: peak %.3g (this chunk's config) instead of %s's %.3g", new, parent.name, old)
    rows_per_step = t.micro_batch_size * t.grad_accum * processes   # every process trains its own share
    if steps is None:
        steps = max(1, math.ceil(t.epochs * data.n_rows / rows_per_step))
    stream = RowStream(data.n_rows, t.seed, epoch, offset)
    pad_id = tokenizer.pad_token_id
    # Every step's rows are chosen here, so the data position saved at the end is exactly what was trained while
    # a background thread collates (and pins) the next steps' rows. flex_attention compiles for one shape: its
    # rows are padded to max_length.
    plans, epochs = [], []
    for _ in range(steps):
        plans.append(stream.take(rows_per_step))
        epochs.append(stream.epoch)
    width = cfg.data.max_length if runtime.attn_implementation == "flex_attention" else None
    pin = runtime.device == "cuda"

    def make(indices):
        return make_step_batch(data.rows(indices), t.micro_batch_size, pad_id, width, pin, rank, processes)

    device = accelerator.device
    chunk_loss, window_loss = torch.zeros((), device=device), torch.zeros((), device=device)
    chunk_tokens = window_tokens = window_row_tokens = examples_trained = 0
    window_start = time.monotonic()
    steps_ahead = prefetch(make, plans)
    try:
        for i, step in enumerate(steps_ahead):
            loss = train_step(model, step, optimizers, schedulers, accelerator, fused=runtime.liger,
                              max_grad_norm=t.max_grad_norm)
            global_step += 1
            examples_trained += step.examples
            chunk_loss += loss
            window_loss += loss
            chunk_tokens, window_tokens = chunk_tokens + step.tokens, window_tokens + step.tokens
            window_row_tokens += step.row_tokens
            if (i + 1) % t.log_every == 0 or i + 1 == steps:   # the one read-back from the device per log interval
                window_sum = float(accelerator.reduce(window_loss, "sum"))   # all processes' loss: waits for the
                # device (the rate counts its work); a no-op collective with one process
                rate = window_row_tokens / max(1e-9, time.monotonic() - window_start)
                progress = {"step": global_step, "chunk_step": i + 1, "chunk_steps": steps,
                            "loss": window_sum / max(1, window_tokens), "lr": schedulers[-1].get_last_lr()[0],
                            "epoch": epochs[i], "tokens_per_s": rate}
                log.info("step %d (%d/%d) loss %.4f lr %.2e epoch %d", global_step, i + 1, steps, progress["loss"],
                         progress["lr"], epochs[i])
                if on_progress and main:
                    on_progress(progress)
                window_loss.zero_()
                window_tokens = window_row_tokens = 0
                window_start = time.monotonic()
    finally:   # an error or a cancel mid-chunk also stops the prefetch thread
        steps_ahead.close()
    chunk_loss = float(accelerator.reduce(chunk_loss, "sum"))

    raw_model = accelerator.unwrap_model(model)
    # every rank evaluates (FSDP2's forward needs them all); the same rows give each the same number
    val_loss = evaluate_loss(raw_model, data.val_rows(), pad_id, t.micro_batch_size, accelerator.device)
    meta = read_sidecar(data_file) or {}
    file_record = {"path": str(data_file.resolve()), "sha256": file_sha, "examples": data.examples,
                   "val_examples": data.val_examples, "generator": meta.get("generator"),
                   "spec": meta.get("spec"), "skill": meta.get("skill"), "level": meta.get("level")}
    lineage = list(parent_ledger.get("lineage_files", []))
    if file_sha not in lineage:
        lineage.append(file_sha)
    ledger = {
        "parent": parent.name if parent else None,
        "base_model": parent_ledger.get("base_model", cfg.model.name_or_path),
        "base_model_identity": parent_ledger.get("base_model_identity", model_identity(cfg.model.name_or_path)),
        "init": parent_ledger.get("init", "pretrained") if parent else cfg.model.init,   # how the lineage began
        "train_loss": chunk_loss / max(1, chunk_tokens),
        "val_loss": val_loss,
        "learning_rate": schedulers[-1].get_last_lr()[0],
        "eval": {},
        "data_files": [file_record],
        "lineage_files": lineage,
        "skill": meta.get("skill"),
        "level": meta.get("level"),
        "examples_trained": examples_trained,
        "total_examples_trained": parent_ledger.get("total_examples_trained", 0) + examples_trained,
        "tokens_trained": int(chunk_tokens),
        "steps_in_chunk": steps,
        "masking": {"masked_ratio": data.masking.masked_ratio, "fill_ratio": data.fill_ratio,
                    "checks": {c.name: c.passed for c in data.masking.checks if not c.warning_only},
                    "warnings": data.masking.warnings, "rewritten_turns": data.rewritten_turns,
                    "multi_turn": cfg.data.multi_turn},
        "runtime": dataclasses.asdict(runtime) | {"gradient_checkpointing": checkpointing,
                                                   "gradient_checkpointing_reason": checkpointing_why,
                                                   "compile": cfg.model.compile,
                                                   "optimizer": t.optimizer, "lora": cfg.model.lora},
        "optimizer_split": split,
        "distributed": {"processes": processes, "mode": mode},
        "config": cfg.to_dict(),
        "system_prompt": system_prompt,
        "profile": profile.name,
        "code_version": ckpt.code_version(),
        "seconds": round(time.monotonic() - started, 2),
    }
    state = None
    if t.save_optimizer:
        rng = rng_state(runtime.device)
        if processes > 1:   # every process's own RNG, gathered to rank 0 (a collective: all ranks take part)
            from accelerate.utils import gather_object

            rng = {"ranks": gather_object([rng])}
        state = {"optimizer": optimizer_states(accelerator, model, optimizers, mode),
                 "scheduler": [sc.state_dict() for sc in schedulers], "rng": rng,
                 "trainer": {"global_step": global_step,
                             "data": {"sha256": file_sha, "epoch": stream.epoch, "offset": stream.offset}}}
    weights = None
    if mode == "fsdp2":   # the full weights, gathered to rank 0's CPU memory (a collective); tied names once
        weights = {k: v for k, v in accelerator.get_state_dict(model).items() if k not in tied}
    path = None
    if main:
        raw_model.config.use_cache = True   # saved configs should generate with a cache
        path = ckpt.save_checkpoint(cfg.root, global_step, raw_model, tokenizer, ledger, state, state_dict=weights)
        mirror.push_checkpoint(cfg, path)     # a URL root: committed on the store (manifest last), else a no-op
        log.info("wrote %s (train loss %.4f, val loss %s)", path.name, ledger["train_loss"],
                 f"{val_loss:.4f}" if val_loss is not None else "n/a")
    if processes > 1:
        path = share_from_main(path)   # the others wait here until rank 0 has written (or failed: torchrun ends all)
    return ChunkResult(path, global_step, steps, ledger["train_loss"], val_loss, examples_trained,
                       int(chunk_tokens), time.monotonic() - started)
