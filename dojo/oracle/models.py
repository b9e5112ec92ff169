"""Which checkpoint a model id names, and the models kept loaded.

Ids, resolved on every request (so a promotion takes effect without a restart):

* ``promoted`` — the checkpoint ``state/promoted.json`` points at;
* ``latest`` — the newest checkpoint that passes ``verify_checkpoint`` (with hashes);
* a canonical name, ``checkpoint-{step}-{YYYYMMDD}-{HHMM}``;
* ``step-N`` — the checkpoint of global step N.

An id that names nothing usable raises ``UnknownModel`` with the ids that do exist: there is never a fallback to
another checkpoint. The server only reads: a broken checkpoint is refused with its problems, never quarantined
(that is the training side's job, ``model.checkpoint.latest_checkpoint``).

``Resident`` is a loaded checkpoint: weights (a LoRA adapter merged onto its base), tokenizer, and its own profile
from its ledger (system prompt and logit processors). ``ResidentModels`` keeps at most ``max_resident`` of them,
dropping the least recently used idle one; each has an asyncio lock so one generation at a time runs on it while
other requests wait their turn.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from dojo import promotion
from dojo.storage import StateError
from model import checkpoint as ckpt

log = logging.getLogger("dojo.oracle")

STEP_ID = re.compile(r"^step-(\d{1,12})$")


class UnknownModel(LookupError):
    """A model id that names no usable checkpoint; ``available`` lists the ids that do."""

    def __init__(self, message: str, available: list[str]):
        super().__init__(message)
        self.available = available


@dataclass(frozen=True)
class Resolved:
    requested: str          # the id as asked
    name: str               # the canonical checkpoint name that answers
    step: int
    path: Path


def checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest step first (structure and sizes checked; hashes when one is resolved)."""
    return ckpt.list_checkpoints(root)


def available_ids(root: Path) -> list[str]:
    """Every id that resolves now: the aliases that point somewhere, then each canonical name and step-N."""
    found = checkpoints(root)
    ids = []
    try:
        pointer = promotion.current(root)
    except StateError:
        pointer = None
    if pointer and any(p.name == pointer["checkpoint"] for p in found):
        ids.append("promoted")
    if found:
        ids.append("latest")
    ids += [p.name for p in found]
    ids += [f"step-{ckpt.parse_name(p.name)}" for p in found]
    return ids


def _verified(root: Path, requested: str, path: Path) -> Resolved:
    problems = ckpt.verify_checkpoint(path)
    if problems:
        raise UnknownModel(f"model {requested!r} is checkpoint {path.name}, which cannot be served: "
                           f"{'; '.join(problems)}", available_ids(root))
    return Resolved(requested, path.name, ckpt.parse_name(path.name), path)


def resolve(root: Path, model_id: str) -> Resolved:
    """The checkpoint ``model_id`` names (see the module docstring); UnknownModel otherwise."""
    root = Path(root)
    folder = root / "checkpoints"
    if model_id == "promoted":
        try:
            pointer = promotion.current(root)
        except StateError as exc:
            raise UnknownModel(f"model 'promoted': the promotion pointer cannot be read ({exc})",
                               available_ids(root)) from None
        if pointer is None:
            raise UnknownModel("model 'promoted': no checkpoint has been promoted yet", available_ids(root))
        path = folder / pointer["checkpoint"]
        if ckpt.parse_name(path.name) is None or not path.is_dir():
            raise UnknownModel(f"model 'promoted': the promoted checkpoint {pointer['checkpoint']!r} is not under "
                               f"{folder}", available_ids(root))
        return _verified(root, model_id, path)
    if model_id == "latest":
        for path in reversed(ckpt.candidates(root)):
            if not ckpt.verify_checkpoint(path):
                return Resolved(model_id, path.name, ckpt.parse_name(path.name), path)
        raise UnknownModel(f"model 'latest': there is no valid checkpoint under {folder} yet", available_ids(root))
    step_match = STEP_ID.fullmatch(model_id)
    if step_match:
        step = int(step_match.group(1))
        matching = [p for p in ckpt.candidates(root) if ckpt.parse_name(p.name) == step]
        if len(matching) > 1:
            raise UnknownModel(f"model {model_id!r} is ambiguous: {', '.join(p.name for p in matching)}; ask for "
                               f"one of them by name", available_ids(root))
        if matching:
            return _verified(root, model_id, matching[0])
    elif ckpt.parse_name(model_id) is not None and (folder / model_id).is_dir():
        return _verified(root, model_id, folder / model_id)
    raise UnknownModel(f"model {model_id[:200]!r} does not exist", available_ids(root))


# ---------------------------------------------------------------- loaded models
@dataclass(eq=False)
class Resident:
    """A checkpoint loaded for generation, with what its own profile says."""
    name: str
    step: int
    path: Path
    model: object
    tokenizer: object
    profile: object                 # model.profiles.Profile
    system_prompt: str
    base: str | None                # the base model of a LoRA adapter checkpoint
    context: int                    # max_position_embeddings
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0                  # requests holding or waiting for it

    def info(self) -> dict:
        return {"step": self.step, "path": str(self.path), "base": self.base, "profile": self.profile.name}


def load_resident(cfg, path: Path) -> Resident:
    """Load a checkpoint for generation (blocking): an adapter is merged onto its base, in eval mode."""
    from model.loading import adapter_base, load_model, load_tokenizer, pick_runtime
    from model.profiles import trained_with

    ledger = ckpt.read_ledger(path)
    profile, system_prompt = trained_with(ledger, "none", cfg.data.system_prompt)
    runtime = pick_runtime(cfg.model.dtype, cfg.model.attn_implementation)       # no Liger: generation only
    tokenizer = load_tokenizer(path, cfg.model.trust_remote_code)
    model = load_model(path, runtime, cfg.model.trust_remote_code, trainable=False, merge_adapter=True)
    model.eval()
    context = int(getattr(model.config, "max_position_embeddings", 0) or 0) or 1 << 30
    return Resident(path.name, ckpt.parse_name(path.name), path, model, tokenizer, profile, system_prompt,
                    adapter_base(path), context)


class ResidentModels:
    """At most ``max_resident`` loaded checkpoints, least recently used idle one dropped first. Loading runs in a
    thread; requests for a checkpoint being loaded wait for that one load."""

    def __init__(self, cfg, max_resident: int, loader=load_resident):
        self.cfg, self.max_resident, self.loader = cfg, max_resident, loader
        self._models: OrderedDict[str, Resident] = OrderedDict()
        self._loading: dict[str, asyncio.Task] = {}
        self._lock = asyncio.Lock()

    def names(self) -> list[str]:
        return list(self._models)

    async def acquire(self, resolved: Resolved) -> Resident:
        """The loaded checkpoint (loading it when needed), counted as in use until ``release``."""
        key = str(resolved.path)
        async with self._lock:
            resident = self._models.get(key)
            if resident is not None:
                self._models.move_to_end(key)
                resident.users += 1
                return resident
            task = self._loading.get(key)
            if task is None:
                task = asyncio.get_running_loop().run_in_executor(None, self.loader, self.cfg, resolved.path)
                self._loading[key] = task
        try:
            resident = await asyncio.shield(task)
        finally:
            async with self._lock:
                self._loading.pop(key, None)
        async with self._lock:
            resident = self._models.setdefault(key, resident)
            self._models.move_to_end(key)
            resident.users += 1
            self._evict()
        return resident

    async def release(self, resident: Resident) -> None:
        async with self._lock:
            resident.users -= 1
            self._evict()

    def _evict(self) -> None:
        while len(self._models) > self.max_resident:
            idle = next((k for k, r in self._models.items() if r.users == 0), None)
            if idle is None:            # all busy: over the limit until one is released
                return
            dropped = self._models.pop(idle)
            log.info("dropped %s from memory (serve.max_resident %d)", dropped.name, self.max_resident)
            del dropped
            gc.collect()
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except ImportError:
                pass
