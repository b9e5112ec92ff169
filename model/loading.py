"""Loading a model and its tokenizer: one path for the built-in tiny model, an HF directory, a hub id, or a
dojo checkpoint. Chooses device, dtype and attention kernel, and says what it chose (the trainer records it).

``init="random"`` builds fresh seeded weights from a directory's ``config.json`` (``model.init: random``), so a
directory holding only a config and a tokenizer trains; ``make_small_qwen3_dir`` writes such a directory (the
real Qwen3 tokenizer and chat template on a tiny random Qwen3) for tests and benchmarks.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import shutil
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
            "the liger-kernel package is not installed (pip install -e '.[gpu]')"
        raise ValueError(f"config model.liger: on, but {why}; use auto or off")
    return setting != "off" and device == "cuda" and available


def apply_liger() -> None:
    """Patch transformers' Qwen3 with Liger's RoPE, RMSNorm, SwiGLU and fused linear cross-entropy (logits are
    never materialised when the model computes the loss from labels). Must run before the model is built."""
    from liger_kernel.transformers import apply_liger_kernel_to_qwen3

    apply_liger_kernel_to_qwen3(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                fused_linear_cross_entropy=True)


# Packed rows on CUDA without flash-attn: sdpa with the dense (B, 1, T, T) block-diagonal mask transformers builds
# from the position ids, or flex_attention with the same document mask as a BlockMask (fully masked blocks
# skipped, but compiled at start-up). Both keep packed rows isolated (tests/test_attention.py). Chosen by
# measurement: benchmarks/gpu_suite.sh times both on Qwen3-0.6B at 2048 and 4096 tokens and prints which wins.
# No GPU has been lent to this project yet, so auto keeps sdpa — the path every CUDA test has run — until that
# measurement says otherwise (docs/model-options.md records the choice).
CUDA_PACKED_ATTENTION = "sdpa"


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
        attn = "flash_attention_2" if cuda and has_fa2 else CUDA_PACKED_ATTENTION if cuda else "sdpa"
    if attn == "flash_attention_2" and not (cuda and has_fa2):
        why = "no CUDA device" if not cuda else "the flash_attn package is not installed"
        raise ValueError(f"config model.attn_implementation: flash_attention_2 requested but {why}; "
                         f"use sdpa or auto")
    if attn == "flex_attention" and not cuda:
        raise ValueError("config model.attn_implementation: flex_attention requested but no CUDA device (torch's "
                         "flex_attention has no backward pass on CPU); use sdpa or auto")
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


def has_weights(path: str | Path) -> bool:
    """Whether a local model directory holds safetensors weights (one file or sharded). Pickle weights do not
    count: ``refuse_pickle_weights`` turns such a directory away first."""
    return any(p.suffix == ".safetensors" or p.name.endswith(".safetensors.index.json") for p in Path(path).iterdir())


def random_model(name_or_path: str | Path, runtime: Runtime, trust_remote_code: bool = False, seed: int = 0):
    """A causal LM with fresh weights built from ``name_or_path``'s config.json (no weights read), in the
    runtime's dtype and attention kernel. Seeded: the same seed gives the same weights; the caller's RNG state is
    left as it was."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    with torch.random.fork_rng(devices=[]):   # weights are initialised on the CPU, before .to(device)
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, dtype=getattr(torch, runtime.dtype),
                                                attn_implementation=runtime.attn_implementation,
                                                trust_remote_code=trust_remote_code)


def load_model(name_or_path: str | Path, runtime: Runtime, trust_remote_code: bool = False,
               trainable: bool = True, merge_adapter: bool = False, init: str = "pretrained", seed: int = 0):
    """Load a causal LM (a full model, or base + LoRA adapter when ``name_or_path`` is an adapter directory) with
    the chosen dtype and attention kernel, on the chosen device. ``merge_adapter`` folds an adapter into the
    weights (for generation); otherwise the adapter stays trainable when ``trainable``. ``init="random"`` ignores
    any weights and builds seeded random ones from the config (``random_model``); it never applies to an adapter.
    """
    from transformers import AutoModelForCausalLM

    from validation.model_dir import refuse_pickle_weights

    refuse_pickle_weights(str(name_or_path))   # before any loader: unpickling runs code
    base = adapter_base(name_or_path) if Path(str(name_or_path)).is_dir() else None
    if init == "random":
        if base:
            raise ValueError(f"{name_or_path} is a LoRA adapter; model.init: random applies only to a base model")
        model = random_model(name_or_path, runtime, trust_remote_code, seed)
    else:
        weights_dir = Path(str(base or name_or_path))
        refuse_pickle_weights(weights_dir)     # an adapter's base directory too
        if weights_dir.is_dir() and not has_weights(weights_dir):
            raise ValueError(f"model directory {weights_dir} has no weights (model.safetensors or shards); to train "
                             f"it from random weights built from its config.json, set model.init: random")
        model = AutoModelForCausalLM.from_pretrained(       # use_safetensors: a hub id never falls back to pickle
            str(weights_dir), dtype=getattr(torch, runtime.dtype), use_safetensors=True,
            attn_implementation=runtime.attn_implementation, trust_remote_code=trust_remote_code)
    if base:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(name_or_path), is_trainable=trainable and not merge_adapter)
        if merge_adapter:
            model = model.merge_and_unload()
    log.info("loaded %s%s%s: %.2fM parameters, %s, %s, attention=%s", name_or_path,
             f" (LoRA adapter on {base})" if base else "", f" (random init, seed {seed})" if init == "random" else "",
             sum(p.numel() for p in model.parameters()) / 1e6, runtime.device, runtime.dtype,
             runtime.attn_implementation)
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


# ---------------------------------------------------------------- a tiny random Qwen3 with the real tokenizer
SMALL_QWEN3 = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "head_dim": 16, "tie_word_embeddings": True}
QWEN3_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                         "generation_config.json", "chat_template.jinja")


def make_small_qwen3_dir(dest: Path, source: Path, **sizes) -> Path:
    """Write a weightless model directory at ``dest``: ``source``'s tokenizer files (and chat template) copied,
    and its config.json with ``SMALL_QWEN3`` sizes, overridden by ``sizes`` (keys of that config.json); vocab and
    everything else kept. Train it with ``model.init: random``. ``source`` is a Qwen3 directory such as
    ``Qwen/Qwen3-0.6B`` downloaded without weights."""
    dest, source = Path(dest), Path(source)
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    if not (source / "tokenizer.json").is_file():
        raise ValueError(f"make_small_qwen3_dir: {source} has no tokenizer.json")
    unknown = sorted(set(sizes) - set(config))
    if unknown:
        raise ValueError(f"make_small_qwen3_dir: {', '.join(unknown)} not in {source / 'config.json'}; "
                         f"use keys from {', '.join(sorted(config))}")
    config.update(SMALL_QWEN3 | sizes)
    dest.mkdir(parents=True, exist_ok=True)
    for name in QWEN3_TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, dest / name)
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return dest


def cpu_threads(cfg, runtime, evaluating: bool = False) -> None:
    """``train.cpu_threads`` (``eval.cpu_threads`` for generation, when set) on CPU. On a small shared CPU (the
    demo's 2 cores, a training and an evaluation worker) more threads than cores spin-wait against one another:
    the demo gives each one thread (1,200 steps cost 459 CPU-s on two training threads, 213 on one)."""
    threads = (evaluating and cfg.eval.cpu_threads) or cfg.train.cpu_threads
    if runtime.device == "cpu" and threads:
        torch.set_num_threads(threads)
