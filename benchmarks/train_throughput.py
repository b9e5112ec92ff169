"""Training throughput, MFU and peak memory: dojo's training configuration vs plain Hugging Face, same run.

    python benchmarks/train_throughput.py --model qwen3-0.6b|qwen3-4b|tiny --seq 2048 [--seq 4096] \\
        --steps N --warmup W [--micro-batch B] [--peak-tflops T] [--out docs/benchmarks.md] [--json FILE] \\
        [--attn auto|sdpa|flex_attention] [--optimizer adamw|paged_adamw_8bit] [--checkpointing auto|on|off] \\
        [--compile] [--liger auto|on|off]

Models are random-initialised from a ``transformers.Qwen3Config`` (no download): ``qwen3-0.6b`` and ``qwen3-4b``
use the published sizes (``model/vram.py``'s ``KNOWN_CONFIGS``), ``tiny`` the built-in tiny model's config
(``dojo.config.TINY_MODEL_DIR``) for CPU smoke runs. ``--model`` and ``--seq`` repeat; every model x seq runs
both configurations, each in its own subprocess (``--only dojo|baseline``, one JSON line on stdout): Liger
patches transformers' Qwen3 classes globally, and a fresh process gives each configuration its own peak memory.

- **dojo**: the training step ``dojo train`` runs, ``model.train.train_step``, with its set-up
  (``prepare_model_for_training``, ``model.optimizers.build``, ``make_schedulers``, ``make_accelerator``) and
  its data path (``make_step_batch`` in the ``prefetch`` thread: rows collated, pinned on CUDA, copied
  ``non_blocking``); dojo's defaults unless ``--attn/--optimizer/--checkpointing/--compile/--liger`` say otherwise:
  bf16 on CUDA (float32 on CPU); attention ``auto`` (``model.loading.pick_runtime``); Liger on CUDA when
  installed; AdamW (fused on CUDA); gradient checkpointing ``auto`` (``model.vram.choose_checkpointing``: off on
  CPU, on CUDA by the VRAM estimate); packed rows (best-fit-decreasing, per-example position ids, no attention
  mask), token-weighted mean loss over the step.
- **baseline** ("plain HF"): same dtype; sdpa; no Liger; ``torch.optim.AdamW(fused=False)``; no checkpointing;
  the same examples, one per row, padded to the longest in the batch, 2-D ``attention_mask``, labels -100 on
  padding; HF's own loss (``model(..., labels=...)``); batches cut so each step holds as many real tokens as
  dojo's average step.

Both clip gradients to norm 1.0 (dojo's default; HF Trainer's too). Data: synthetic examples of uniformly random
length 64..seq/2 with random token ids, the first quarter of each example's labels masked to -100 (a prompt).
The first ``--warmup`` steps are not timed; the next ``--steps`` are.

FLOPs per real (non-pad) token (PaLM's convention, Chowdhery et al. 2022, appendix B)::

    6 * N  +  12 * n_layers * A * s_eff

- ``N`` = matmul parameters: q/k/v/o and gate/up/down of every decoder layer, plus the lm_head (vocab x hidden,
  counted even when tied to the embeddings: the output matmul runs either way). Embedding lookups and norms are
  not matmuls and are not counted.
- ``A`` = attention width = num_attention_heads x head_dim. In GPT-style models A equals ``hidden``, which is how
  the formula is usually written; Qwen3 decouples them (0.6B: A = 2048 vs hidden 1024; 4B: 4096 vs 2560), and
  the attention matmuls (QK^T and PV) scale with A.
- ``s_eff`` = the context each token's attention runs over: for dojo's packed rows the token's own example length
  (block-diagonal attention), for padded rows the padded row width. The reported "attn seq" is its mean over real
  tokens (sum l*s_eff / sum l). Causal masking is not halved (PaLM's convention).

MFU ("model FLOPs utilization") = model FLOPs/s / peak FLOP/s, without counting the forward pass that gradient
checkpointing recomputes. HFU ("hardware FLOPs utilization") counts it: x 4/3 where checkpointing is on (every
decoder layer is checkpointed, so its whole forward runs twice), x 1 otherwise (the baseline never checkpoints).
Peak FLOP/s: ``--peak-tflops``, else by GPU
name (dense bf16: H100 SXM / H200 989, H100 NVL 835, H100 PCIe 756, A100 312, RTX 4090 165, RTX 3090 71); on CPU
MFU is n/a.

Peak memory on CUDA: NVML ``used`` sampled every 50 ms in a background thread, minus the reading before the model
is built (so it includes the CUDA context, the caching allocator's reserve and bitsandbytes' paged optimizer
state while resident on the GPU, which ``torch.cuda.max_memory_allocated`` does not see; a peak shorter than 50 ms
can be missed); torch's ``max_memory_allocated`` is reported next to it. On CPU: peak RSS of the configuration's
process (``resource.getrusage``) minus its RSS before the model is built. When ``model/vram.py`` exists its
estimate for the same configuration is printed too (resident / total incl. paged state).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GIB = 1 << 30
MIB = 1 << 20
CONFIGURATIONS = ("baseline", "dojo")
MIN_EXAMPLE = 64
LR = 1e-5
MAX_GRAD_NORM = 1.0
RESULT_PREFIX = "RESULT "

# dojo's defaults (dojo.yaml / dojo.config): what `dojo train` runs unless configured otherwise. --attn, --optimizer,
# --checkpointing, --compile and --liger change the dojo column only.
DOJO_DEFAULTS = {"attn": "auto", "optimizer": "adamw", "checkpointing": "auto", "compile": False, "liger": "auto"}

# Qwen3-0.6B's real config.json (no weights), kept beside the checkout like the tests' tokenizer.
REAL_QWEN3_DIR = (os.environ.get("DOJO_QWEN3_TOKENIZER")
                  or Path(__file__).resolve().parents[2] / "shared" / "qwen3-tokenizer")
REAL_QWEN3_CONFIG = Path(REAL_QWEN3_DIR) / "config.json"

MODELS = {"qwen3-0.6b": "Qwen/Qwen3-0.6B", "qwen3-4b": "Qwen/Qwen3-4B", "tiny": "tiny"}

# Dense bf16 tensor-core peak, TFLOP/s, matched as a substring of the GPU name (most specific first).
PEAK_TFLOPS = (("H200", 989.0), ("H100 NVL", 835.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0),
               ("4090", 165.0), ("3090", 71.0))


# ---------------------------------------------------------------- model configs and FLOPs
def model_config(name: str):
    """A Qwen3Config for ``--model`` (random init, nothing downloaded)."""
    from transformers import AutoConfig, Qwen3Config

    if name == "tiny":
        from dojo.config import TINY_MODEL_DIR

        return AutoConfig.from_pretrained(str(TINY_MODEL_DIR))
    key = MODELS[name]
    from model.vram import KNOWN_CONFIGS

    real = REAL_QWEN3_CONFIG if REAL_QWEN3_CONFIG.is_file() else None
    if real:   # Qwen3-0.6B's own config.json; 4B = the same file with the 4B architecture numbers
        values = json.loads(real.read_text(encoding="utf-8"))
        values = {k: v for k, v in values.items() if k not in ("architectures", "transformers_version", "torch_dtype")}
        config = Qwen3Config(**(values | KNOWN_CONFIGS[key]))
    else:      # the published numbers (model/vram.py), when ../shared is not beside the checkout
        config = Qwen3Config(**KNOWN_CONFIGS[key])
    config.name_or_path = key
    return config


def attention_width(config) -> int:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_attention_heads * head_dim


def matmul_params(config) -> int:
    """N: matmul weights of the decoder layers (q/k/v/o, gate/up/down) + the lm_head (tied or not)."""
    h, a, inter = config.hidden_size, attention_width(config), config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    per_layer = h * a + 2 * h * kv + a * h + 3 * h * inter
    return config.num_hidden_layers * per_layer + config.vocab_size * h


def flops_per_token(config, seq_eff: float, recompute: bool = False) -> float:
    """Training FLOPs (forward + backward) per real token: 6*N + 12*n_layers*A*seq_eff; x 4/3 with the forward
    recomputed by gradient checkpointing (hardware FLOPs instead of model FLOPs)."""
    flops = 6 * matmul_params(config) + 12 * config.num_hidden_layers * attention_width(config) * seq_eff
    return flops * 4 / 3 if recompute else flops


def peak_tflops_for(gpu_name: str | None) -> float | None:
    if not gpu_name:
        return None
    for key, tflops in PEAK_TFLOPS:
        if key.lower() in gpu_name.lower():
            return tflops
    return None


# ---------------------------------------------------------------- data: the same examples for both
def synthetic_examples(n_tokens: int, seq: int, vocab: int, seed: int):
    """Examples of random length 64..seq/2, random ids, labels = ids with the first quarter masked, until
    ``n_tokens`` tokens."""
    import random

    from model.chat import IGNORE, TokenizedExample

    rng = random.Random(seed)
    out, total = [], 0
    while total < n_tokens:
        n = rng.randint(MIN_EXAMPLE, seq // 2)
        ids = tuple(rng.randrange(vocab) for _ in range(n))
        masked = n // 4
        out.append(TokenizedExample(ids, (IGNORE,) * masked + ids[masked:], f"synthetic:{len(out) + 1}", 1))
        total += n
    return out


def plan(seq: int, micro_batch: int, n_steps: int, vocab: int, seed: int = 0) -> dict:
    """Per-step work for both configurations, deterministic in the arguments (each subprocess rebuilds it).

    dojo: ``micro_batch`` packed rows per step (BFD into ``seq``, rows shuffled). baseline: the examples of those
    rows in the same order, cut into ``n_steps`` batches of about dojo's average real tokens per step.
    """
    import random

    from model.packing import pack

    need_rows = n_steps * micro_batch
    examples = synthetic_examples(int(need_rows * seq * 1.02) + seq, seq, vocab, seed)
    rows = pack(examples, seq)
    random.Random(seed + 1).shuffle(rows)
    rows = (rows * math.ceil(need_rows / len(rows)))[:need_rows]
    dojo_steps = [rows[i * micro_batch:(i + 1) * micro_batch] for i in range(n_steps)]
    used = [examples[j] for r in rows for j in r.examples]
    target = sum(len(r) for r in rows) / n_steps
    buckets: list[list] = [[] for _ in range(n_steps)]
    cum = 0
    for e in used:   # each example to the step its midpoint falls in: every step holds ~target real tokens
        buckets[min(n_steps - 1, int((cum + len(e) / 2) // target))].append(e)
        cum += len(e)
    buckets = [b for b in buckets if b]
    baseline_steps = (buckets * math.ceil(n_steps / len(buckets)))[:n_steps]
    return {"dojo": dojo_steps, "baseline": baseline_steps, "target_tokens": target,
            "fill": sum(len(r) for r in rows) / (len(rows) * seq)}


def padded_batch(batch, pad_id: int) -> dict:
    import torch

    from model.chat import IGNORE

    width = max(len(e) for e in batch)
    return {"input_ids": torch.tensor([list(e.input_ids) + [pad_id] * (width - len(e)) for e in batch]),
            "labels": torch.tensor([list(e.labels) + [IGNORE] * (width - len(e)) for e in batch]),
            "attention_mask": torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in batch])}


def step_work(which: str, step) -> tuple[int, int]:
    """(real tokens, sum over real tokens of the attention context s_eff) of one step."""
    if which == "dojo":
        lengths = [n for row in step for n in row.lengths]
        return sum(lengths), sum(n * n for n in lengths)
    width = max(len(e) for e in step)
    return sum(len(e) for e in step), sum(len(e) * width for e in step)


# ---------------------------------------------------------------- memory
def _nvml_handle(pynvml):
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    first = visible.split(",")[0].strip() if visible else ""
    if first and not first.isdigit():
        return pynvml.nvmlDeviceGetHandleByUUID(first)
    return pynvml.nvmlDeviceGetHandleByIndex(int(first or 0))


class GpuMemoryProbe:
    """NVML ``used`` of the GPU, sampled every 50 ms; ``before`` is read when the probe is made."""

    def __init__(self, interval: float = 0.05):
        import pynvml

        pynvml.nvmlInit()
        self._nvml, self._handle, self.interval = pynvml, _nvml_handle(pynvml), interval
        self.before = self.peak = self._used()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    kind = "NVML used - before model"

    def _used(self) -> int:
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._used())

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> int:
        """Peak ``used`` above the reading before the model, in bytes."""
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._used())
        return self.peak - self.before


class CudaMemoryProbe(GpuMemoryProbe):
    """Without pynvml (nvidia-ml-py): the same device-wide reading from CUDA (total - free, cudaMemGetInfo)."""
    kind = "CUDA total - free (no pynvml) - before model"

    def __init__(self, interval: float = 0.05):
        import torch

        self._torch, self.interval = torch, interval
        self.before = self.peak = self._used()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _used(self) -> int:
        free, total = self._torch.cuda.mem_get_info()
        return int(total - free)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def vram_estimate(config, seq: int, micro_batch: int, **kwargs) -> dict | None:
    try:
        from model.vram import estimate
    except ImportError:
        return None
    try:
        est = estimate(config, seq, micro_batch, **kwargs)
    except Exception as exc:   # an estimate is a side note; never fail the benchmark on it
        return {"error": str(exc)}
    return {"resident": est.resident_bytes, "total": est.total_bytes, "breakdown": est.breakdown,
            "paged": est.paged_bytes}


# ---------------------------------------------------------------- one configuration (the subprocess)
def run_configuration(which: str, model_name: str, seq: int, steps: int, warmup: int, micro_batch: int,
                      threads: int | None = None, options: dict | None = None) -> dict:
    """One configuration in this process. ``options`` (dojo only): attn, optimizer, checkpointing, compile, liger."""
    options = dict(DOJO_DEFAULTS, **(options or {}))
    probe = None
    try:   # read the GPU's memory before torch touches CUDA
        probe = GpuMemoryProbe()
    except Exception:
        probe = None
    import torch

    if threads:
        torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    if not cuda:
        probe = None
    elif probe is None:
        probe = CudaMemoryProbe()
    device = "cuda" if cuda else "cpu"

    from transformers import AutoModelForCausalLM

    from model.loading import apply_liger, pick_runtime

    dojo = which == "dojo"
    runtime = pick_runtime("auto", options["attn"] if dojo else "sdpa", options["liger"] if dojo else "off")
    dtype = getattr(torch, runtime.dtype)
    liger = runtime.liger
    optimizer_name = options["optimizer"] if dojo else "torch AdamW (fused=False)"
    config = model_config(model_name)
    work = plan(seq, micro_batch, warmup + steps, config.vocab_size)
    steps_data = work[which]
    pad_id = getattr(config, "pad_token_id", None) or 0
    checkpointing, checkpointing_why = False, "baseline: off"
    if dojo:
        from model import vram

        setting = {"auto": "auto", "on": True, "off": False}[options["checkpointing"]]
        gpu_bytes = (vram.detect_gpu_bytes() or torch.cuda.get_device_properties(0).total_memory) if cuda else None
        try:
            checkpointing, checkpointing_why = vram.choose_checkpointing(
                setting, device, config, seq, micro_batch, optimizer_name, gpu_bytes=gpu_bytes, dtype=runtime.dtype,
                liger=liger, attention=runtime.attn_implementation)
        except ValueError as exc:
            checkpointing, checkpointing_why = setting is not False, f"no estimate ({exc})"

    if liger:
        apply_liger()
    if probe:
        probe.start()
    rss_before = rss_bytes()
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=runtime.attn_implementation)
    model = model.to(device)
    if dojo:   # dojo's own training step, set-up and data path (model/train.py), as `dojo train` runs them
        import dataclasses

        from dojo.config import TrainConfig
        from model.optimizers import build
        from model.train import (make_accelerator, make_schedulers, make_step_batch, prefetch,
                                 prepare_model_for_training, train_step)

        model = prepare_model_for_training(model, checkpointing, options["compile"])
        train_cfg = dataclasses.replace(TrainConfig(), optimizer=optimizer_name, learning_rate=LR, warmup_steps=0,
                                        max_grad_norm=MAX_GRAD_NORM, micro_batch_size=micro_batch)
        optimizers, _ = build(model, train_cfg, device)
        schedulers = make_schedulers(optimizers, train_cfg)
        accelerator = make_accelerator(runtime)
        model, *optimizers = accelerator.prepare(model, *optimizers)
        width = seq if runtime.attn_implementation == "flex_attention" else None
        batches = prefetch(lambda rows: make_step_batch(rows, micro_batch, pad_id, width, pin=cuda), steps_data)
    else:
        model.config.use_cache = False
        model.train()
        optimizers = [torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.98), fused=False)]
        batches = [padded_batch(exs, pad_id) for exs in steps_data]
    work_per_step = [step_work(which, s) for s in steps_data]

    def sync():
        if cuda:
            torch.cuda.synchronize()

    result = {"configuration": which, "model": model_name, "seq": seq, "device": device,
              "gpu": torch.cuda.get_device_name() if cuda else None, "dtype": runtime.dtype,
              "attention": runtime.attn_implementation, "liger": liger, "compile": dojo and options["compile"],
              "optimizer": optimizer_name, "gradient_checkpointing": checkpointing,
              "checkpointing_why": checkpointing_why, "micro_batch": micro_batch,
              "params": sum(p.numel() for p in model.parameters()), "matmul_params": matmul_params(config),
              "attention_width": attention_width(config), "layers": config.num_hidden_layers,
              "fill": work["fill"], "threads": torch.get_num_threads(), "oom": False}
    if not dojo:
        result["pad_share"] = 1 - sum(int(b["attention_mask"].sum()) for b in batches) / sum(
            b["input_ids"].numel() for b in batches)
        result["rows_per_step"] = sum(len(b["input_ids"]) for b in batches) / len(batches)
    start = None
    loss = float("nan")
    try:
        for i, batch in enumerate(batches):
            if i == warmup:
                sync()
                start = time.perf_counter()
            if dojo:
                step_loss = train_step(model, batch, optimizers, schedulers, accelerator, fused=liger,
                                       max_grad_norm=MAX_GRAD_NORM) / max(1, batch.tokens)
            else:
                batch = {k: v.to(device) for k, v in batch.items()}
                step_loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  labels=batch["labels"], use_cache=False).loss
                step_loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
                for o in optimizers:
                    o.step()
                    o.zero_grad(set_to_none=True)
            if i == len(steps_data) - 1:
                loss = float(step_loss.detach())
        sync()
        seconds = time.perf_counter() - start
    except torch.OutOfMemoryError as exc:
        result.update(oom=True, error=str(exc).splitlines()[0])
        seconds = None
    timed = work_per_step[warmup:]
    tokens = sum(t for t, _ in timed)
    attn_ctx = sum(c for _, c in timed)
    # sum over timed tokens of flops_per_token(config, s_eff): 6N per token + 12*L*A*s_eff per token
    model_flops = (6 * matmul_params(config) * tokens
                   + 12 * config.num_hidden_layers * attention_width(config) * attn_ctx)
    result.update(seconds=seconds, timed_steps=len(timed), real_tokens=tokens, tokens_per_step=tokens / len(timed),
                  attn_seq=attn_ctx / tokens, model_flops=model_flops,
                  hardware_flops=model_flops * (4 / 3 if checkpointing else 1), loss=loss,
                  tokens_per_s=tokens / seconds if seconds else None)
    if probe:
        result["peak_bytes"] = probe.stop()
        result["peak_kind"] = probe.kind
        result["torch_max_allocated"] = torch.cuda.max_memory_allocated()
    else:
        import resource

        result["peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
        result["peak_kind"] = "peak RSS - RSS before model (CPU)"
        result["torch_max_allocated"] = None
    if dojo:
        est_shape = (seq, micro_batch)
    else:   # the biggest padded batch
        b = max(batches, key=lambda b: b["input_ids"].numel())
        est_shape = (b["input_ids"].shape[1], b["input_ids"].shape[0])
    est_optimizer = optimizer_name if dojo else "adamw"
    result["vram_estimate"] = vram_estimate(
        config, est_shape[0], est_shape[1], optimizer=est_optimizer, dtype=runtime.dtype,
        gradient_checkpointing=checkpointing, liger=liger, attention=runtime.attn_implementation)
    result["vram_shape"] = est_shape
    return result


# ---------------------------------------------------------------- the parent: run, tabulate, append
def run_child(which: str, model_name: str, seq: int, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--only", which, "--model", model_name, "--seq", str(seq),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--micro-batch", str(args.micro_batch)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    cmd += ["--attn", args.attn, "--optimizer", args.optimizer, "--checkpointing", args.checkpointing,
            "--liger", args.liger] + (["--compile"] if args.compile else [])
    print(f"running {which} {model_name} seq {seq} ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    sys.stderr.write(proc.stderr[-4000:])
    return {"configuration": which, "model": model_name, "seq": seq, "failed": True,
            "error": f"exit {proc.returncode}, no result (stderr above)"}


def _mem(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / GIB:.2f} GiB" if abs(n) >= GIB else f"{n / MIB:.0f} MiB"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def table(results: list[dict], args, peak: float | None, gpu: str | None) -> str:
    ok = [r for r in results if not r.get("failed")]
    cuda = any(r.get("device") == "cuda" for r in ok)
    import torch
    import transformers

    seqs = " ".join(f"--seq {s}" for s in args.seq)
    models = " ".join(f"--model {m}" for m in args.model)
    mb = f" --micro-batch {args.micro_batch}" if args.micro_batch != 1 else ""
    pk = f" --peak-tflops {args.peak_tflops:g}" if args.peak_tflops else ""
    th = f" --threads {args.threads}" if args.threads else ""
    opts = "".join(f" --{k} {v}" for k, v in dojo_options(args).items() if k != "compile" and v != DOJO_DEFAULTS[k])
    opts += " --compile" if args.compile else ""
    command = (f"python benchmarks/train_throughput.py {models} {seqs} --steps {args.steps} --warmup {args.warmup}"
               f"{mb}{pk}{th}{opts}")
    dojo = next((r for r in ok if r["configuration"] == "dojo"), {})
    base = next((r for r in ok if r["configuration"] == "baseline"), {})
    machine = (f"{platform.machine()}, {os.cpu_count()} CPUs, " +
               (f"GPU {gpu}, peak {peak:g} TFLOP/s bf16 dense" if cuda and peak else
                f"GPU {gpu}, peak FLOP/s unknown (give --peak-tflops)" if cuda else
                f"no GPU (device cpu, {dojo.get('threads', '?')} torch threads)"))
    title = "GPU" if cuda else "CPU"
    lines = [
        f"### Training throughput, dojo vs plain HF ({title}) — {dt.date.today().isoformat()}",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}; torch {torch.__version__}, transformers {transformers.__version__}  ",
        f"dojo: `model.train.train_step` (the step `dojo train` runs: accelerate, LR scheduler, token-weighted "
        f"loss, clipping, rows collated (and pinned on CUDA) by the prefetch thread, no read-back in the step); "
        f"{dojo.get('dtype', '?')}, {dojo.get('attention', '?')}, Liger {'on' if dojo.get('liger') else 'off'}, "
        f"{dojo.get('optimizer', '?')}{' (fused)' if cuda and dojo.get('optimizer') == 'adamw' else ''}, "
        f"gradient checkpointing {dojo.get('checkpointing_why', '?')}, "
        f"compile {'on (decoder layers)' if dojo.get('compile') else 'off'}, "
        f"{args.micro_batch} packed BFD row(s) of ≤seq per step, per-example position ids  ",
        f"baseline: {base.get('dtype', '?')}, sdpa, no Liger, torch AdamW (fused=False), no checkpointing, one example "
        f"per row padded to the longest, 2-D attention mask, HF loss; same real tokens per step as dojo's average  ",
        f"Data: random token ids, example lengths uniform 64..seq/2, first quarter of each example masked; "
        f"{args.warmup} warm-up + {args.steps} timed steps; gradient clipping 1.0 in both  ",
        "FLOPs per real token = 6·N + 12·n_layers·A·s_eff (N = decoder matmul params + lm_head, "
        "A = heads·head_dim, s_eff = own example length when packed, padded width when padded); MFU counts "
        "model FLOPs (no recompute), HFU adds the checkpoint recompute (×4/3) where checkpointing is on; "
        "MFU = model FLOPs / seconds / peak dense bf16 FLOP/s  ",
        (f"Peak memory: {dojo.get('peak_kind', 'NVML used')}, sampled every 50 ms (includes CUDA context and "
         "paged optimizer state while on the GPU); torch max_memory_allocated for comparison" if cuda else
         "Peak memory: peak RSS of the configuration's process minus its RSS before the model (CPU; torch's "
         "max_memory_allocated is CUDA-only)") +
        ("; vram.py estimate = `model/vram.py` for the same configuration (resident / incl. paged; dojo at "
         "seq × micro-batch, baseline at its biggest padded batch)" if any(r.get("vram_estimate") for r in ok) else "")
        + ("" if cuda or not any(r.get("vram_estimate") for r in ok) else
           " — a GPU estimate (0.5 GiB of it is the CUDA context), not comparable with CPU RSS"),
        "",
        "| model | seq | configuration | real tokens/step | attn seq | real tokens/s | MFU | HFU | "
        + ("peak memory (NVML Δ) | torch max allocated" if cuda else "peak memory (RSS Δ) | torch max allocated")
        + " | vram.py estimate | loss |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.get("failed"):
            lines.append(f"| {r['model']} | {r['seq']} | {r['configuration']} | failed: {r['error']} |"
                         + " |" * 8)
            continue
        tps = r.get("tokens_per_s")
        mfu = hfu = None
        if tps and peak and r["device"] == "cuda":
            mfu = r["model_flops"] / r["seconds"] / (peak * 1e12)
            hfu = r["hardware_flops"] / r["seconds"] / (peak * 1e12)
        est = r.get("vram_estimate")
        est_text = ("n/a" if not est else est.get("error", "error")[:40] if "error" in est else
                    f"{_mem(est['resident'])} / {_mem(est['total'])}")
        speed = "OOM" if r.get("oom") else f"{tps:,.0f}"
        lines.append(
            f"| {r['model']} | {r['seq']} | {r['configuration']} | {r['tokens_per_step']:,.0f} | {r['attn_seq']:,.0f} "
            f"| {speed} | {_pct(mfu)} | {_pct(hfu)} | {_mem(r['peak_bytes'])} | {_mem(r['torch_max_allocated'])} "
            f"| {est_text} | {r['loss']:.3f} |")
    lines.append("")
    for m in args.model:
        for s in args.seq:
            pair = {r["configuration"]: r for r in ok if r["model"] == m and r["seq"] == s}
            d, b = pair.get("dojo", {}).get("tokens_per_s"), pair.get("baseline", {}).get("tokens_per_s")
            ratio = f"**{d / b:.2f}×**" if d and b else "n/a (a configuration failed or ran out of memory)"
            extra = ""
            if "baseline" in pair:
                extra = (f" (baseline: {pair['baseline']['rows_per_step']:.1f} rows/step, "
                         f"{100 * pair['baseline']['pad_share']:.1f}% padding; dojo fill "
                         f"{100 * pair['baseline']['fill']:.1f}%)")
            lines.append(f"{m} @ seq {s}: dojo / baseline real tokens/s {ratio}{extra}  ")
    return "\n".join(lines) + "\n"


def dojo_options(args) -> dict:
    return {"attn": args.attn, "optimizer": args.optimizer, "checkpointing": args.checkpointing,
            "compile": args.compile, "liger": args.liger}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", choices=sorted(MODELS), required=True,
                        help="repeatable")
    parser.add_argument("--seq", action="append", type=int, help="row length (repeatable; default 2048)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--micro-batch", type=int, default=1, help="dojo: packed rows per step")
    parser.add_argument("--peak-tflops", type=float, help="peak dense bf16 TFLOP/s (default: by GPU name)")
    parser.add_argument("--threads", type=int, help="torch CPU threads in each configuration (default: torch's)")
    parser.add_argument("--attn", default="auto", choices=["auto", "sdpa", "flex_attention", "flash_attention_2"],
                        help="dojo column: model.attn_implementation")
    parser.add_argument("--optimizer", default="adamw", choices=["adamw", "paged_adamw_8bit", "muon"],
                        help="dojo column: train.optimizer")
    parser.add_argument("--checkpointing", default="auto", choices=["auto", "on", "off"],
                        help="dojo column: model.gradient_checkpointing")
    parser.add_argument("--compile", action="store_true", help="dojo column: model.compile (regional)")
    parser.add_argument("--liger", default="auto", choices=["auto", "on", "off"], help="dojo column: model.liger")
    parser.add_argument("--skip-baseline", action="store_true", help="run the dojo column only (option sweeps)")
    parser.add_argument("--json", help="also write every configuration's result as JSON lines to this file")
    parser.add_argument("--out", help="append the result table to this markdown file")
    parser.add_argument("--only", choices=CONFIGURATIONS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.seq = args.seq or [2048]
    if args.steps < 1 or args.warmup < 0 or args.micro_batch < 1 or min(args.seq) < 2 * MIN_EXAMPLE:
        parser.error(f"need --steps >= 1, --warmup >= 0, --micro-batch >= 1, --seq >= {2 * MIN_EXAMPLE}")

    if args.only:
        result = run_configuration(args.only, args.model[0], args.seq[0], args.steps, args.warmup,
                                   args.micro_batch, args.threads, dojo_options(args))
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0

    which_ones = ("dojo",) if args.skip_baseline else CONFIGURATIONS
    results = [run_child(which, m, s, args) for m in args.model for s in args.seq for which in which_ones]
    gpu = next((r["gpu"] for r in results if r.get("gpu")), None)
    peak = args.peak_tflops or peak_tflops_for(gpu)
    text = table(results, args, peak, gpu)
    print(text)
    if args.json:
        with open(args.json, "a", encoding="utf-8") as f:
            for r in results:
                f.write(json.dumps(dict(r, peak_tflops=peak, options=dojo_options(args))) + "\n")
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write("\n" + text)
    return 1 if any(r.get("failed") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
