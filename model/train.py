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
"""
from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from dojo.config import Config
from dojo.sidecar import read_sidecar
from model import checkpoint as ckpt
from model.chat import IGNORE
from model.data import PreparedData, prepare
from model.profiles import resolve as resolve_profile
from model.loading import adapter_base, add_lora, apply_liger, load_model, load_tokenizer, pick_runtime
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


def loss_sum(model, batch: dict[str, torch.Tensor], fused: bool = False) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over trained tokens of a packed batch, and how many there were.

    ``fused`` (Liger on CUDA): the model computes the loss from labels with the fused linear cross-entropy, so
    the (B, T, V) logits are never materialised; ``num_items_in_batch=1`` makes its reduction a plain sum.
    """
    if fused:
        out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"],
                    use_cache=False, num_items_in_batch=1)
        return out.loss, int((batch["labels"][:, 1:] != IGNORE).sum())
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    logits = out.logits[:, :-1, :]                      # (B, T-1, V)
    targets = batch["labels"][:, 1:]                    # (B, T-1)
    total = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1),
                            ignore_index=IGNORE, reduction="sum")
    return total, int((targets != IGNORE).sum())


@torch.no_grad()
def evaluate_loss(model, rows: list[PackedRow], pad_id: int, batch_size: int, device: str) -> float | None:
    if not rows:
        return None
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in collate(rows[i:i + batch_size], pad_id).items()}
        s, n = loss_sum(model, batch)
        total, count = total + float(s), count + n
    model.train(was_training)
    return total / max(1, count)


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


def preflight_vram(cfg: Config, runtime) -> None:
    """Refuse, with the numbers, a configuration that cannot fit the detected GPU — before an hour of training
    ends in an out-of-memory error. Sizes the latest checkpoint's model (or the base model)."""
    from model import vram

    source = ckpt.latest_checkpoint(cfg.root) or cfg.model.name_or_path
    base = adapter_base(source) if Path(str(source)).is_dir() else None
    try:
        config = vram.load_config(base or source)
    except ValueError as exc:   # not a Qwen3 the estimator knows: say so, do not block training
        log.warning("VRAM preflight skipped: %s", exc)
        return
    est = vram.preflight(config, cfg.data.max_length, cfg.train.micro_batch_size, cfg.train.optimizer,
                         dtype=runtime.dtype, lora=cfg.model.lora, lora_rank=cfg.model.lora_rank,
                         gradient_checkpointing=cfg.model.gradient_checkpointing, liger=runtime.liger)
    log.info("VRAM preflight: about %.1f GiB on the GPU", est.resident_bytes / 2**30)


def train_chunk(cfg: Config, data_file: str | Path, steps: int | None = None,
                on_progress: Callable[[dict], None] | None = None, sha256: str | None = None) -> ChunkResult:
    """Train one chunk on ``data_file`` and write a checkpoint under ``cfg.root``. See the module docstring.

    Only one chunk trains per storage root at a time (an flock under ``state/``): two would fork the lineage.
    """
    from dojo.storage import exclusive_lock

    with exclusive_lock(cfg.root / "state" / "train.lock", "a training chunk"):
        return _train_chunk(cfg, Path(data_file), steps, on_progress, sha256)


def _train_chunk(cfg: Config, data_file: Path, steps: int | None,
                 on_progress: Callable[[dict], None] | None, sha256: str | None) -> ChunkResult:
    from accelerate import Accelerator

    started = time.monotonic()
    if steps is not None and steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    runtime = pick_runtime(cfg.model.dtype, cfg.model.attn_implementation, cfg.model.liger)
    if runtime.device == "cuda":
        preflight_vram(cfg, runtime)
    if runtime.liger:
        apply_liger()
    parent = ckpt.latest_checkpoint(cfg.root)   # the newest *valid* one: broken newer ones are quarantined
    source = parent or cfg.model.name_or_path
    refuse_pickle_weights(source)                # before the tokenizer, the data or any loader touches it
    parent_ledger = ckpt.read_ledger(parent) if parent else {}
    if parent:
        check_same_base(parent, parent_ledger, cfg)
    log.info("chunk on %s, starting from %s", data_file, source)

    tokenizer = load_tokenizer(source, cfg.model.trust_remote_code)
    profile, system_prompt = resolve_profile(cfg.data.profile, cfg.data.system_prompt)
    log.info("profile %s, system prompt: %r", profile.name, system_prompt)
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
    if cfg.model.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    t = cfg.train
    optimizers, split = build_optimizers(model, t, runtime.device)
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lr_factor(t)) for o in optimizers]

    global_step, epoch, offset = parent_ledger.get("step", 0), 0, 0
    if parent and ckpt.has_training_state(parent):
        state_dir = parent / ckpt.STATE_DIR
        saved_opts, saved_scheds = ckpt.load_state(state_dir, "optimizer"), ckpt.load_state(state_dir, "scheduler")
        if len(saved_opts) != len(optimizers) or parent_ledger.get("runtime", {}).get("optimizer") != t.optimizer:
            raise ValueError(f"config train.optimizer is {t.optimizer}, but {parent.name} was trained with "
                             f"{parent_ledger.get('runtime', {}).get('optimizer')}; its optimizer state cannot be "
                             f"resumed (use another DOJO_HOME, or set train.optimizer back)")
        for o, st in zip(optimizers, saved_opts):
            o.load_state_dict(st)
        for sc, st in zip(schedulers, saved_scheds):
            sc.load_state_dict(st)
        trainer = ckpt.read_trainer_state(parent)
        set_rng_state(ckpt.load_state(state_dir, "rng"))
        if trainer["data"]["sha256"] == file_sha:
            epoch, offset = trainer["data"]["epoch"], trainer["data"]["offset"]
            log.info("resuming inside %s at epoch %d, row %d", data_file.name, epoch, offset)
    else:
        if parent:
            log.warning("%s has no optimizer state: weights resume, optimizer and schedule start fresh", parent.name)
        torch.manual_seed(t.seed)
        random.seed(t.seed)

    accelerator = Accelerator(cpu=runtime.device == "cpu", mixed_precision="no")
    model, *optimizers = accelerator.prepare(model, *optimizers)
    rows_per_step = t.micro_batch_size * t.grad_accum
    if steps is None:
        steps = max(1, math.ceil(t.epochs * data.n_rows / rows_per_step))
    stream = RowStream(data.n_rows, t.seed, epoch, offset)
    pad_id = tokenizer.pad_token_id

    chunk_loss = chunk_tokens = window_loss = window_tokens = 0.0
    examples_trained = 0
    window_start = time.monotonic()
    for i in range(steps):
        picked = data.rows(stream.take(rows_per_step))
        micro = [picked[k:k + t.micro_batch_size] for k in range(0, len(picked), t.micro_batch_size)]
        batches = [{k: v.to(accelerator.device) for k, v in collate(m, pad_id).items()} for m in micro]
        n_tokens = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches)
        step_loss = 0.0
        for batch in batches:
            s, _ = loss_sum(model, batch, fused=runtime.liger)
            accelerator.backward(s / max(1, n_tokens))   # token-weighted mean over the whole step
            step_loss += float(s.detach())
        if t.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm)
        for o, sc in zip(optimizers, schedulers):
            o.step()
            sc.step()
            o.zero_grad(set_to_none=True)
        global_step += 1
        examples_trained += sum(len(r.examples) for r in picked)
        chunk_loss, chunk_tokens = chunk_loss + step_loss, chunk_tokens + n_tokens
        window_loss, window_tokens = window_loss + step_loss, window_tokens + n_tokens
        if (i + 1) % t.log_every == 0 or i + 1 == steps:
            rate = sum(len(r) for r in picked) * t.log_every / max(1e-9, time.monotonic() - window_start)
            progress = {"step": global_step, "chunk_step": i + 1, "chunk_steps": steps,
                        "loss": window_loss / max(1, window_tokens), "lr": schedulers[-1].get_last_lr()[0],
                        "epoch": stream.epoch, "tokens_per_s": rate}
            log.info("step %d (%d/%d) loss %.4f lr %.2e epoch %d", global_step, i + 1, steps, progress["loss"],
                     progress["lr"], stream.epoch)
            if on_progress:
                on_progress(progress)
            window_loss = window_tokens = 0.0
            window_start = time.monotonic()

    raw_model = accelerator.unwrap_model(model)
    val_loss = evaluate_loss(raw_model, data.val_rows(), pad_id, t.micro_batch_size, runtime.device)
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
        "runtime": dataclasses.asdict(runtime) | {"gradient_checkpointing": cfg.model.gradient_checkpointing,
                                                   "optimizer": t.optimizer, "lora": cfg.model.lora},
        "optimizer_split": split,
        "config": cfg.to_dict(),
        "system_prompt": system_prompt,
        "profile": profile.name,
        "code_version": ckpt.code_version(),
        "seconds": round(time.monotonic() - started, 2),
    }
    state = None
    if t.save_optimizer:
        state = {"optimizer": [o.state_dict() for o in optimizers], "scheduler": [sc.state_dict() for sc in schedulers],
                 "rng": rng_state(runtime.device),
                 "trainer": {"global_step": global_step,
                             "data": {"sha256": file_sha, "epoch": stream.epoch, "offset": stream.offset}}}
    raw_model.config.use_cache = True   # saved configs should generate with a cache
    path = ckpt.save_checkpoint(cfg.root, global_step, raw_model, tokenizer, ledger, state)
    log.info("wrote %s (train loss %.4f, val loss %s)", path.name, ledger["train_loss"],
             f"{val_loss:.4f}" if val_loss is not None else "n/a")
    return ChunkResult(path, global_step, steps, ledger["train_loss"], val_loss, examples_trained,
                       int(chunk_tokens), time.monotonic() - started)
