"""Loading a model and its tokenizer: one path for the built-in tiny model, an HF directory, a hub id, or a
dojo checkpoint. Chooses device, dtype and attention kernel, and says what it chose (the trainer records it).
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger("dojo.model")


@dataclass(frozen=True)
class Runtime:
    """What the model actually runs with; recorded in every checkpoint's ledger."""
    device: str
    dtype: str
    attn_implementation: str
    liger: bool = False


def pick_liger(setting: str, device: str) -> bool:
    """Liger's Triton kernels run on CUDA only: ``on`` without CUDA is refused at start-up."""
    available = importlib.util.find_spec("liger_kernel") is not None
    if setting == "on" and (device != "cuda" or not available):
        why = "there is no CUDA device (Liger's kernels are Triton/CUDA)" if device != "cuda" else \
            "the liger-kernel package is not installed"
        raise ValueError(f"config model.liger: on, but {why}; use auto or off")
    return setting != "off" and device == "cuda" and available


def apply_liger() -> None:
    """Patch transformers' Qwen3 with Liger's RoPE, RMSNorm, SwiGLU and fused linear cross-entropy (logits are
    never materialised when the model computes the loss from labels). Must run before the model is built."""
    from liger_kernel.transformers import apply_liger_kernel_to_qwen3

    apply_liger_kernel_to_qwen3(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                fused_linear_cross_entropy=True)


def pick_runtime(dtype: str = "auto", attn: str = "auto", liger: str = "off") -> Runtime:
    """Resolve ``auto`` settings for this machine; refuse impossible combinations with what to do instead."""
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if cuda and torch.cuda.is_bf16_supported() else "float32"
    if not cuda and dtype != "float32":
        raise ValueError(f"config model.dtype: {dtype} on CPU is slow and lossy for training; use float32 or auto")
    has_fa2 = importlib.util.find_spec("flash_attn") is not None
    if attn == "auto":
        attn = "flash_attention_2" if cuda and has_fa2 else "sdpa"
    if attn == "flash_attention_2" and not (cuda and has_fa2):
        why = "no CUDA device" if not cuda else "the flash_attn package is not installed"
        raise ValueError(f"config model.attn_implementation: flash_attention_2 requested but {why}; "
                         f"use sdpa or auto")
    return Runtime(device, dtype, attn, pick_liger(liger, device))


def load_tokenizer(name_or_path: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        # Qwen3 ships <|endoftext|> as pad; a tokenizer without one gets its eos (labels mask padding anyway).
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ValueError(f"tokenizer at {name_or_path} has no chat template; dojo renders every example "
                         f"with the model's own template")
    return tokenizer


def adapter_base(path: str | Path) -> str | None:
    """The base model a LoRA adapter directory was trained on, or None when ``path`` is not an adapter."""
    import json

    from validation.model_dir import check_model_dir

    if check_model_dir(path).kind != "lora":
        return None
    return json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]


def load_model(name_or_path: str | Path, runtime: Runtime, trust_remote_code: bool = False,
               trainable: bool = True, merge_adapter: bool = False):
    """Load a causal LM (a full model, or base + LoRA adapter when ``name_or_path`` is an adapter directory) with
    the chosen dtype and attention kernel, on the chosen device. ``merge_adapter`` folds an adapter into the
    weights (for generation); otherwise the adapter stays trainable when ``trainable``."""
    from transformers import AutoModelForCausalLM

    base = adapter_base(name_or_path) if Path(str(name_or_path)).is_dir() else None
    model = AutoModelForCausalLM.from_pretrained(
        str(base or name_or_path), dtype=getattr(torch, runtime.dtype),
        attn_implementation=runtime.attn_implementation, trust_remote_code=trust_remote_code)
    if base:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(name_or_path), is_trainable=trainable and not merge_adapter)
        if merge_adapter:
            model = model.merge_and_unload()
    log.info("loaded %s%s: %.2fM parameters, %s, %s, attention=%s", name_or_path,
             f" (LoRA adapter on {base})" if base else "", sum(p.numel() for p in model.parameters()) / 1e6,
             runtime.device, runtime.dtype, runtime.attn_implementation)
    return model.to(runtime.device)


def add_lora(model, model_cfg):
    """Wrap a full model in a fresh LoRA adapter; refuse target modules the model does not have."""
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [m for m in model_cfg.lora_target_modules if m not in names]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ValueError(f"config model.lora_target_modules: {missing} do not exist in this model; its linear "
                         f"modules are {', '.join(linear)}")
    config = LoraConfig(r=model_cfg.lora_rank, lora_alpha=model_cfg.lora_alpha, lora_dropout=model_cfg.lora_dropout,
                        target_modules=list(model_cfg.lora_target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def merge_adapter(adapter_dir: str | Path, out: str | Path) -> Path:
    """Fold a LoRA adapter into its base model and save a full model directory (safetensors + tokenizer)."""
    out = Path(out)
    if adapter_base(adapter_dir) is None:
        raise ValueError(f"{adapter_dir} is not a LoRA adapter directory (adapter_config.json + adapter weights)")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty; dojo never overwrites a model directory")
    model = load_model(adapter_dir, pick_runtime("float32" if not torch.cuda.is_available() else "auto"),
                       trainable=False, merge_adapter=True)
    model.save_pretrained(out)
    load_tokenizer(adapter_dir).save_pretrained(out)
    return out
