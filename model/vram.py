"""How much GPU memory a training run needs, estimated from the model's config before anything is loaded.

    dojo vram --model Qwen/Qwen3-4B --max-length 2048 --micro-batch 1 --optimizer paged_adamw_8bit --liger --gpu rtx4090

``estimate()`` returns a breakdown in bytes; ``preflight()`` raises ``ValueError`` with that breakdown when a
run will not fit the GPU (detected through NVML, or given). Qwen3 configs only (the family dojo trains); the
two published sizes dojo targets are in ``KNOWN_CONFIGS`` so no download is needed.

What each part is, and how sure we are of it:

- **weights, gradients, optimizer state** are exact tensor sizes, counted the way dojo's training loop makes
  them (``model/optimizers.py``; pure-dtype training, ``mixed_precision="no"``): torch AdamW and Muon keep their
  state in the parameter's dtype (``zeros_like``), so AdamW on bf16 weights holds 2 x 2 bytes per parameter
  (8 bytes only for fp32 parameters) plus one fp32 ``step`` scalar per tensor; bitsandbytes 8-bit AdamW holds
  2 uint8 states + an fp32 absmax per 256-element block (fp32 states for tensors under 4096 elements), and pages
  the states of tensors of >= 1e5 elements, which may spill to host memory; peft keeps LoRA adapters in fp32
  (``autocast_adapter_dtype``). ``tests/test_vram.py`` checks these three parts against the real tensors after
  an optimizer step, byte for byte, on CPU.
- **activations** follow Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
  Models" (arXiv:2205.05198), eq. 1: per layer ``s*b*h*(34 + 5*a*s/h)`` bytes with 16-bit activations (scaled by
  dtype bytes / 2 for fp32). Flash/SDPA attention never stores the ``a*s*s`` scores, so their ``5*a*s/h`` term
  is dropped unless ``attention="eager"``. With gradient checkpointing (transformers checkpoints each decoder
  layer) only each layer's input ``s*b*h`` survives the forward pass, plus one layer's full activations while it
  is recomputed in backward. The 34 is the paper's GPT figure (4h GELU MLP, dropout masks); Qwen3 has a SwiGLU
  MLP of 3-3.8h and no dropout, which a count of its saved tensors puts nearer 40-46. NOT calibrated: this
  machine has no GPU; measure ``torch.cuda.max_memory_allocated`` on one and adjust.
- **logits**: without Liger, dojo's ``loss_sum`` materialises ``b*s*V`` logits in the model dtype, their fp32
  upcast and the fp32 log-softmax/gradient (``dtype bytes + 4 + 4`` per logit); with Liger's fused linear
  cross-entropy only a chunk of about ``s*b*h`` logits, the ``s*b*h`` input gradient and an fp32 loss per token
  exist. NOT calibrated either (GPU only).
- **CUDA context** 0.5 GiB and **fragmentation** 10% of what the caching allocator holds (everything but the
  context and the paged state): rules of thumb, not measurements.

Cross-check against the old system: a full fine-tune of Qwen3-4B at seq 2048, micro-batch 1, paged 8-bit AdamW,
Liger, checkpointing, bf16 peaked at 18.6 GB on a 24 GB RTX 4090. Weights + gradients + 8-bit state alone are
~24.1 GB, so that run only fitted because the paged state lived (at least mostly) in host memory; the figure
compares to ``resident_bytes`` (everything but the paged state), which this module puts at 19.0 GB (+2.2%);
the test asserts 15%. Most of that is the exact weights and gradients (16.1 GB): it confirms the accounting, not
the activation formula (0.6 GB of it).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

GIB = 1 << 30

# Published sizes (the models' config.json on the hub), so `--model Qwen/Qwen3-0.6B` works offline.
KNOWN_CONFIGS = {
    "Qwen/Qwen3-0.6B": {"hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16,
                        "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 3072,
                        "vocab_size": 151936, "tie_word_embeddings": True, "attention_bias": False},
    "Qwen/Qwen3-4B": {"hidden_size": 2560, "num_hidden_layers": 36, "num_attention_heads": 32,
                      "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 9728,
                      "vocab_size": 151936, "tie_word_embeddings": True, "attention_bias": False},
}

# Nominal memory of common GPUs (what `--gpu NAME` means); detect_gpu_bytes() reads the real figure.
GPU_PRESETS = {
    "rtx3090": 24 * GIB, "rtx4090": 24 * GIB, "rtx5090": 32 * GIB, "rtx4080": 16 * GIB, "t4": 16 * GIB,
    "a10": 24 * GIB, "l4": 24 * GIB, "l40s": 48 * GIB, "a6000": 48 * GIB, "a100-40": 40 * GIB,
    "a100-80": 80 * GIB, "h100": 80 * GIB, "h200": 141 * GIB,
}
GPU_LABELS = {
    "rtx3090": "an RTX 3090", "rtx4090": "an RTX 4090", "rtx5090": "an RTX 5090", "rtx4080": "an RTX 4080",
    "t4": "a T4", "a10": "an A10", "l4": "an L4", "l40s": "an L40S", "a6000": "an RTX A6000",
    "a100-40": "an A100 40GB", "a100-80": "an A100 80GB", "h100": "an H100", "h200": "an H200",
}

OPTIMIZERS = ("adamw", "paged_adamw_8bit", "muon")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

CUDA_CONTEXT_BYTES = GIB // 2
FRAGMENTATION = 0.10
KORTHIKANTI_BYTES = 34            # per token per hidden unit per layer, 16-bit activations (paper eq. 1)
KORTHIKANTI_SCORES = 5            # x heads x seq per token per layer: attention scores, eager attention only
BNB_MIN_8BIT = 4096               # bitsandbytes min_8bit_size: smaller tensors keep fp32 states
BNB_BLOCK = 256                   # blockwise quantisation: one fp32 absmax per block per state
BNB_PAGED_MIN = 100_000           # bitsandbytes pages only states of tensors this large (get_state_buffer)


# ---------------------------------------------------------------- model configs
def load_config(model: str | Path):
    """A transformers config for ``model``: a name in KNOWN_CONFIGS, or a local HF model directory."""
    from transformers import AutoConfig, Qwen3Config

    if str(model) in KNOWN_CONFIGS:
        config = Qwen3Config(**KNOWN_CONFIGS[str(model)])
        config.name_or_path = str(model)
        return config
    if Path(model).is_dir():
        return AutoConfig.from_pretrained(str(model))
    raise ValueError(f"--model {model!r}: not a model directory and not a known model id; use a local HF model "
                     f"directory (with config.json) or one of {', '.join(KNOWN_CONFIGS)}")


def _dims(config) -> dict:
    if config.model_type != "qwen3":
        raise ValueError(f"vram estimates know Qwen3 models only; this config is model_type {config.model_type!r}")
    h, heads = config.hidden_size, config.num_attention_heads
    return {"h": h, "layers": config.num_hidden_layers, "heads": heads, "kv": config.num_key_value_heads,
            "d": getattr(config, "head_dim", None) or h // heads, "inter": config.intermediate_size,
            "vocab": config.vocab_size, "tied": bool(config.tie_word_embeddings),
            "bias": bool(getattr(config, "attention_bias", False))}


def _layer_tensors(dims: dict) -> list[tuple[str, int, int]]:
    """One decoder layer's parameter tensors as (name, in_features or 0 for a vector, numel), as Qwen3 builds them."""
    h, d, q, kv, i = dims["h"], dims["d"], dims["heads"] * dims["d"], dims["kv"] * dims["d"], dims["inter"]
    out = []
    for name, fan_in, fan_out in (("q_proj", h, q), ("k_proj", h, kv), ("v_proj", h, kv), ("o_proj", q, h)):
        out.append((name, fan_in, fan_in * fan_out))
        if dims["bias"]:
            out.append((f"{name}.bias", 0, fan_out))
    out += [("q_norm", 0, d), ("k_norm", 0, d),
            ("gate_proj", h, h * i), ("up_proj", h, h * i), ("down_proj", i, i * h),
            ("input_layernorm", 0, h), ("post_attention_layernorm", 0, h)]
    return out


def parameter_counts(config) -> dict:
    """Exact parameter counts of a Qwen3 config (equal to ``sum(p.numel())`` of the built model).

    ``attention_per_layer`` includes q_norm/k_norm (and biases when ``attention_bias``); ``norms_per_layer`` are the
    two RMSNorms around attention and MLP; ``lm_head`` is 0 when the embeddings are tied.
    """
    dims = _dims(config)
    per = {name: n for name, _, n in _layer_tensors(dims)}
    attention = sum(n for name, n in per.items() if name.startswith(("q_", "k_", "v_", "o_")))
    mlp = per["gate_proj"] + per["up_proj"] + per["down_proj"]
    norms = per["input_layernorm"] + per["post_attention_layernorm"]
    counts = {"embeddings": dims["vocab"] * dims["h"], "attention_per_layer": attention, "mlp_per_layer": mlp,
              "norms_per_layer": norms, "layers": dims["layers"], "final_norm": dims["h"],
              "lm_head": 0 if dims["tied"] else dims["vocab"] * dims["h"]}
    counts["total"] = (counts["embeddings"] + dims["layers"] * (attention + mlp + norms) + counts["final_norm"]
                       + counts["lm_head"])
    return counts


def trainable_tensors(config, lora: bool = False, lora_rank: int = 16) -> list[tuple[int, bool]]:
    """(numel, is_hidden_matrix) per trainable tensor: the whole model, or the LoRA adapters (lora_A r x in,
    lora_B out x r on q/k/v/o/gate/up/down of every layer). ``is_hidden_matrix`` is Muon's share
    (``model.optimizers.is_hidden_matrix``: 2-D weights inside the decoder layers, adapters included)."""
    dims = _dims(config)
    layer = _layer_tensors(dims)
    if lora:
        adapters = []
        for name, fan_in, n in layer:
            if name in LORA_TARGETS:
                fan_out = n // fan_in
                adapters += [(lora_rank * fan_in, True), (fan_out * lora_rank, True)]
        return adapters * dims["layers"]
    tensors = [(dims["vocab"] * dims["h"], False)]
    tensors += [(n, fan_in > 0) for _, fan_in, n in layer] * dims["layers"]
    tensors.append((dims["h"], False))
    if not dims["tied"]:
        tensors.append((dims["vocab"] * dims["h"], False))
    return tensors


# ---------------------------------------------------------------- the estimate
@dataclass(frozen=True)
class Estimate:
    """Bytes per part of a training step's peak. ``breakdown`` is ordered; ``paged_bytes`` is the share of
    the optimizer state bitsandbytes may keep in host memory (not needed on the GPU for the run to fit)."""
    breakdown: dict[str, int]
    params: int
    trainable_params: int
    settings: dict
    paged_bytes: int = 0
    notes: tuple[str, ...] = field(default=())

    @property
    def total_bytes(self) -> int:
        return sum(self.breakdown.values())

    @property
    def resident_bytes(self) -> int:
        """What must be on the GPU: everything but the paged optimizer state."""
        return self.total_bytes - self.paged_bytes

    def fits(self, gpu_bytes: int, headroom: float = 0.05) -> bool:
        """True when the resident part leaves ``headroom`` (a share of the GPU) free."""
        return self.resident_bytes <= gpu_bytes * (1.0 - headroom)

    def format(self, gpu_bytes: int | None = None, gpu_label: str | None = None, headroom: float = 0.05) -> str:
        """A table in GiB and, when a GPU is given, a verdict."""
        s = self.settings
        mode = f"LoRA rank {s['lora_rank']}" if s["lora"] else "full fine-tune"
        lines = [f"{s['model']}: {mode}, {s['dtype']}, {s['optimizer']}, max_length {s['max_length']} x "
                 f"micro-batch {s['micro_batch']}, checkpointing {'on' if s['gradient_checkpointing'] else 'off'}, "
                 f"Liger {'on' if s['liger'] else 'off'}, attention {s['attention']}",
                 f"  parameters {self.params:,} (trainable {self.trainable_params:,})"]
        for name, n in self.breakdown.items():
            note = (f"  ({self.paged_bytes / GIB:.2f} GiB paged: may spill to host memory)"
                    if name == "optimizer state" and self.paged_bytes else "")
            lines.append(f"  {name:<22}{n / GIB:>8.2f} GiB{note}")
        lines.append(f"  {'total':<22}{self.total_bytes / GIB:>8.2f} GiB")
        if self.paged_bytes:
            lines.append(f"  {'on the GPU (not paged)':<22}{self.resident_bytes / GIB:>8.2f} GiB")
        lines += [f"  note: {n}" for n in self.notes]
        if gpu_bytes is None:
            lines.append("no GPU to compare with (none detected, --gpu not given)")
            return "\n".join(lines)
        size = f"{gpu_bytes // GIB}" if gpu_bytes % GIB == 0 else f"{gpu_bytes / GIB:.1f}"
        label = f"{gpu_label} ({size} GiB)" if gpu_label else f"a GPU of {size} GiB"
        paged = (f"; {self.paged_bytes / GIB:.1f} GiB of paged optimizer state may spill to host memory"
                 if self.paged_bytes else "")
        if self.fits(gpu_bytes, headroom):
            lines.append(f"fits {label} with {(gpu_bytes - self.resident_bytes) / GIB:.1f} GiB to spare{paged}")
        else:
            lines.append(f"does NOT fit {label}: needs {self.resident_bytes / GIB:.1f} GiB of "
                         f"{gpu_bytes / GIB:.1f} (keeping {headroom:.0%} free){paged}")
        return "\n".join(lines)


def _optimizer_bytes(tensors: list[tuple[int, bool]], optimizer: str, state_bytes: int) -> tuple[int, int]:
    """(bytes, paged bytes) of the optimizer state for trainable tensors held in ``state_bytes``-byte dtype."""
    if optimizer == "adamw":   # exp_avg + exp_avg_sq in the parameter dtype, an fp32 step scalar per tensor
        return sum(2 * n * state_bytes + 4 for n, _ in tensors), 0
    if optimizer == "muon":    # one momentum buffer per hidden matrix; AdamW for the rest
        muon = sum(n * state_bytes for n, hidden in tensors if hidden)
        adamw = sum(2 * n * state_bytes + 4 for n, hidden in tensors if not hidden)
        return muon + adamw, 0
    if optimizer == "paged_adamw_8bit":
        total = paged = 0
        any_8bit = False
        for n, _ in tensors:
            states = 2 * 4 * n if n < BNB_MIN_8BIT else 2 * n
            if n >= BNB_MIN_8BIT:
                any_8bit = True
                total += 2 * 4 * math.ceil(n / BNB_BLOCK)   # absmax1 + absmax2, never paged
            total += states
            if n >= BNB_PAGED_MIN:
                paged += states
        if any_8bit:
            total += 2 * 256 * 4   # the two quantisation maps, shared by every tensor
        return total, paged
    raise ValueError(f"optimizer {optimizer!r} is not allowed; use one of {', '.join(OPTIMIZERS)}")


def activation_bytes(config, max_length: int, micro_batch: int, dtype: str = "bfloat16",
                     gradient_checkpointing: bool = True, attention: str = "sdpa") -> int:
    """Korthikanti et al. 2022 eq. 1 (see the module docstring); not calibrated on a GPU yet."""
    dims = _dims(config)
    s, b, h, e = max_length, micro_batch, dims["h"], DTYPE_BYTES[dtype]
    one_layer = s * b * h * KORTHIKANTI_BYTES * e // 2
    if attention == "eager":
        one_layer += KORTHIKANTI_SCORES * dims["heads"] * s * s * b * e // 2
    if gradient_checkpointing:
        return dims["layers"] * s * b * h * e + one_layer    # layer inputs kept + one layer recomputed
    return dims["layers"] * one_layer


def logits_bytes(config, max_length: int, micro_batch: int, dtype: str = "bfloat16", liger: bool = False) -> int:
    """The loss head's peak: full logits + fp32 copy + fp32 gradient, or Liger's chunk (see module docstring)."""
    dims = _dims(config)
    s, b, e = max_length, micro_batch, DTYPE_BYTES[dtype]
    if liger:   # a chunk of ~s*b*h logits (chunk_mem_const=1), grad_input s*b*h, fp32 loss per token
        return s * b * (2 * dims["h"] * e + 4)
    upcast = 4 if e < 4 else 0   # loss_sum's .float() is a no-op on fp32 logits
    return s * b * dims["vocab"] * (e + upcast + 4)


def estimate(config, max_length: int, micro_batch: int, optimizer: str, dtype: str = "bfloat16", lora: bool = False,
             lora_rank: int = 16, gradient_checkpointing: bool = True, liger: bool = False,
             attention: str = "sdpa") -> Estimate:
    """Peak GPU memory of one training step of dojo's loop for a Qwen3 ``config``.

    ``optimizer``: adamw | paged_adamw_8bit | muon; ``dtype``: bfloat16 | float16 | float32 (weights, gradients and
    activations; pure-dtype training as dojo does it); ``attention``: sdpa | flash_attention_2 | auto (no stored
    scores) or eager. Weights, gradients and optimizer state are exact; activations and logits are the documented
    approximations of the module docstring.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer {optimizer!r} is not allowed; use one of {', '.join(OPTIMIZERS)}")
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype {dtype!r} is not allowed; use one of {', '.join(DTYPE_BYTES)}")
    if attention not in ("sdpa", "flash_attention_2", "flex_attention", "auto", "eager"):
        raise ValueError(f"attention {attention!r} is not allowed; use sdpa, flash_attention_2, flex_attention, auto "
                         f"or eager")
    if max_length < 1 or micro_batch < 1 or lora_rank < 1:
        raise ValueError(f"max_length, micro_batch and lora_rank must be >= 1; got {max_length}, {micro_batch}, "
                         f"{lora_rank}")
    e = DTYPE_BYTES[dtype]
    params = parameter_counts(config)["total"]
    tensors = trainable_tensors(config, lora, lora_rank)
    trainable = sum(n for n, _ in tensors)
    train_bytes = 4 if lora else e   # peft keeps adapters in fp32 (autocast_adapter_dtype=True)
    weights = params * e + (trainable * 4 if lora else 0)
    gradients = trainable * train_bytes
    opt, paged = _optimizer_bytes(tensors, optimizer, train_bytes)
    acts = activation_bytes(config, max_length, micro_batch, dtype, gradient_checkpointing, attention)
    logits = logits_bytes(config, max_length, micro_batch, dtype, liger)
    allocated = weights + gradients + (opt - paged) + acts + logits
    breakdown = {"weights": weights, "gradients": gradients, "optimizer state": opt, "activations": acts,
                 "logits": logits, "CUDA context": CUDA_CONTEXT_BYTES,
                 "fragmentation (10%)": int(FRAGMENTATION * allocated)}
    notes = ["activations and logits are approximations (Korthikanti et al. 2022), not yet calibrated on a GPU"]
    if paged:
        notes.append("paged optimizer state is not counted against the GPU: bitsandbytes moves it to host "
                     "memory when the GPU is full (slower steps)")
    settings = {"model": getattr(config, "name_or_path", "") or "model", "max_length": max_length,
                "micro_batch": micro_batch, "optimizer": optimizer, "dtype": dtype, "lora": lora,
                "lora_rank": lora_rank, "gradient_checkpointing": gradient_checkpointing, "liger": liger,
                "attention": attention}
    return Estimate(breakdown, params, trainable, settings, paged, tuple(notes))


# ---------------------------------------------------------------- gradient checkpointing: auto
CHECKPOINTING_MARGIN = 0.20   # auto turns checkpointing off only when the estimate leaves this share of the GPU free


def choose_checkpointing(setting, device: str, config=None, max_length: int = 0, micro_batch: int = 1,
                         optimizer: str = "adamw", *, gpu_bytes: int | None = None,
                         margin: float = CHECKPOINTING_MARGIN, **kwargs) -> tuple[bool, str]:
    """``model.gradient_checkpointing`` resolved: (on?, why), the why recorded in the checkpoint's ledger.

    ``true``/``false`` are kept. ``auto``: off on CPU (memory is not what limits a CPU run, and recomputing every
    layer's forward costs about a third more compute); on CUDA, off when the estimate *without* checkpointing
    (``kwargs`` as for ``estimate``) leaves ``margin`` of the GPU free — the activation term is not yet calibrated
    on a GPU, hence the margin — else on; on when the model or the GPU's size is unknown.
    """
    if isinstance(setting, bool):
        return setting, f"model.gradient_checkpointing: {'true' if setting else 'false'}"
    if setting != "auto":
        raise ValueError(f"config model.gradient_checkpointing: {setting!r} is not allowed; use true, false or auto")
    if device != "cuda":
        return False, "auto: off on CPU (memory is not the limit; recomputing costs ~1/3 more compute)"
    if config is None:
        return True, "auto: on (no VRAM estimate for this model)"
    gpu_bytes = gpu_bytes or detect_gpu_bytes()
    if gpu_bytes is None:
        return True, "auto: on (the GPU's memory could not be read)"
    need = estimate(config, max_length, micro_batch, optimizer, gradient_checkpointing=False, **kwargs).resident_bytes
    budget = gpu_bytes * (1.0 - margin)
    verdict = "off" if need <= budget else "on"
    return verdict == "on", (f"auto: {verdict} (estimate without checkpointing {need / GIB:.1f} GiB "
                             f"{'<=' if verdict == 'off' else '>'} {budget / GIB:.1f} GiB, {1 - margin:.0%} of "
                             f"the GPU's {gpu_bytes / GIB:.1f} GiB)")


# ---------------------------------------------------------------- the GPU
def detect_gpu_bytes() -> int | None:
    """Total memory of the first visible GPU (first entry of CUDA_VISIBLE_DEVICES: an index or a UUID) via NVML;
    None without a GPU, without pynvml, or on any NVML error. Never raises."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    first = None
    if visible is not None:
        first = visible.split(",")[0].strip()
        if not first or first.startswith("-"):
            return None   # "" or "-1": CUDA sees no GPU
    try:
        import pynvml
    except Exception:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        if first is None or first.isdigit():
            handle = pynvml.nvmlDeviceGetHandleByIndex(int(first or 0))
        else:
            handle = pynvml.nvmlDeviceGetHandleByUUID(first)
        return int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
    except Exception:
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def parse_gpu(text: str) -> tuple[int, str | None]:
    """``--gpu``: a preset name (rtx4090, h100, ...) or a number of bytes; returns (bytes, label or None)."""
    key = text.strip().lower()
    if key in GPU_PRESETS:
        return GPU_PRESETS[key], GPU_LABELS[key]
    if key.isdigit() and int(key) > 0:
        return int(key), None
    raise ValueError(f"--gpu {text!r}: use a number of bytes or one of {', '.join(GPU_PRESETS)}")


def preflight(config, max_length: int, micro_batch: int, optimizer: str, *, gpu_bytes: int | None = None,
              headroom: float = 0.05, **kwargs) -> Estimate:
    """Estimate, and refuse (``ValueError`` with the breakdown) a run that will not fit the given GPU, or the
    detected one when none is given. Without a GPU there is nothing to check: the estimate is returned."""
    est = estimate(config, max_length, micro_batch, optimizer, **kwargs)
    if gpu_bytes is None:
        gpu_bytes = detect_gpu_bytes()
    if gpu_bytes is None or est.fits(gpu_bytes, headroom):
        return est
    raise ValueError(est.format(gpu_bytes, headroom=headroom) + "\nto fit: lower train.micro_batch_size or "
                     "data.max_length, keep gradient checkpointing on, use Liger, paged_adamw_8bit, or LoRA")
