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


def pick_runtime(dtype: str = "auto", attn: str = "auto") -> Runtime:
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
    return Runtime(device, dtype, attn)


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


def load_model(name_or_path: str | Path, runtime: Runtime, trust_remote_code: bool = False):
    """Load a causal LM with the chosen dtype and attention kernel, on the chosen device, in train mode."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(name_or_path), dtype=getattr(torch, runtime.dtype), attn_implementation=runtime.attn_implementation,
        trust_remote_code=trust_remote_code)
    log.info("loaded %s: %.2fM parameters, %s, %s, attention=%s", name_or_path,
             sum(p.numel() for p in model.parameters()) / 1e6, runtime.device, runtime.dtype,
             runtime.attn_implementation)
    return model.to(runtime.device)
