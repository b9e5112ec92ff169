"""Turn benchmarks/gpu_suite.sh's JSON lines into the markdown for docs/benchmarks.md.

    python benchmarks/gpu_report.py RESULTS_DIR > report.md

RESULTS_DIR holds ``throughput.jsonl`` (dojo vs baseline), ``attention.jsonl`` (dojo with sdpa vs flex_attention),
``compile.jsonl`` (dojo with and without regional compile), ``memory_4b.jsonl`` (Qwen3-4B, paged 8-bit AdamW +
Liger + checkpointing) and ``status.txt`` (what ran, what could not). Imports nothing outside the standard
library: it runs wherever the suite does.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

GIB = 1 << 30
OLD_SYSTEM_PEAK = 18.6e9          # the old system's Qwen3-4B run on an RTX 4090 (bytes, as nvidia-smi's GB)
KORTHIKANTI_BYTES = 34            # model/vram.py's activation constant, for the calibration hint


def load(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def gib(n) -> str:
    return "n/a" if n is None else f"{n / GIB:.2f} GiB"


def mfu(r: dict) -> float | None:
    """model FLOPs / seconds / peak dense bf16 FLOP/s (no recompute counted)."""
    if not r.get("seconds") or not r.get("peak_tflops") or r.get("device") != "cuda":
        return None
    return r["model_flops"] / r["seconds"] / (r["peak_tflops"] * 1e12)


def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def throughput_table(rows: list[dict]) -> list[str]:
    out = ["| model | seq | configuration | attention | checkpointing | optimizer | tokens/s | MFU | "
           "peak Δ (NVML; RSS on CPU) | torch max allocated | vram.py resident | estimate error vs NVML |",
           "|---|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("failed"):
            out.append(f"| {r['model']} | {r['seq']} | {r['configuration']} | failed: {r.get('error', '?')} |"
                       + " |" * 8)
            continue
        est = (r.get("vram_estimate") or {}).get("resident")
        peak = r.get("peak_bytes")
        err = f"{100 * (est - peak) / peak:+.1f}%" if est and peak and r.get("device") == "cuda" else "n/a"
        tps = "OOM" if r.get("oom") else f"{r['tokens_per_s']:,.0f}"
        out.append(f"| {r['model']} | {r['seq']} | {r['configuration']} | {r['attention']} | "
                   f"{'on' if r['gradient_checkpointing'] else 'off'} | {r['optimizer']} | {tps} | {pct(mfu(r))} | "
                   f"{gib(peak)} | {gib(r.get('torch_max_allocated'))} | {gib(est)} | {err} |")
    return out


def ratios(rows: list[dict]) -> list[str]:
    out = []
    for key in sorted({(r["model"], r["seq"]) for r in rows}):
        pair = {r["configuration"]: r for r in rows if (r["model"], r["seq"]) == key and not r.get("failed")}
        d, b = (pair.get(c, {}).get("tokens_per_s") for c in ("dojo", "baseline"))
        out.append(f"- {key[0]} @ {key[1]}: dojo / baseline tokens/s "
                   + (f"**{d / b:.2f}×**" if d and b else "n/a (a configuration failed or ran out of memory)"))
    return out


def calibration(rows: list[dict]) -> list[str]:
    """The activation constant that would make the estimate's allocated part equal torch's max_memory_allocated."""
    out = []
    for r in rows:
        est = r.get("vram_estimate") or {}
        parts, alloc = est.get("breakdown"), r.get("torch_max_allocated")
        if not parts or not alloc or r.get("failed") or r.get("oom"):
            continue
        other = sum(v for k, v in parts.items() if k not in ("activations", "CUDA context")
                    and not k.startswith("fragmentation")) - est.get("paged", 0)
        acts = parts["activations"]
        implied = KORTHIKANTI_BYTES * (alloc - other) / acts if acts else None
        out.append(f"- {r['model']} @ {r['seq']} {r['configuration']} (checkpointing "
                   f"{'on' if r['gradient_checkpointing'] else 'off'}): allocated {gib(alloc)}, estimate without "
                   f"activations {gib(other)}, activations estimated {gib(acts)} → implied constant "
                   + (f"{implied:.1f} (model/vram.py uses {KORTHIKANTI_BYTES})" if implied else "n/a"))
    return out


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else ".")
    lines = ["## GPU suite results", ""]
    status = root / "status.txt"
    if status.is_file():
        lines += ["What ran and what could not:", "", "```", status.read_text(encoding="utf-8").strip(), "```", ""]
    through = load(root / "throughput.jsonl")
    if through:
        first = next((r for r in through if r.get("gpu")), through[0])
        lines += [f"GPU: {first.get('gpu') or 'none (CPU smoke run)'}; peak {first.get('peak_tflops') or 'n/a'} "
                  f"TFLOP/s dense bf16. MFU = 6·N + 12·L·A·s_eff FLOPs per real token × tokens / seconds / peak.",
                  "",
                  "### dojo vs plain HF", ""] + throughput_table(through) + [""] + ratios(through) + [""]
    attn = load(root / "attention.jsonl")
    if attn:
        lines += ["### Packed attention: sdpa (dense 4-D mask) vs flex_attention (document BlockMask)", ""]
        lines += throughput_table(attn) + [""]
        for seq in sorted({r["seq"] for r in attn}):
            by = {r["attention"]: r.get("tokens_per_s") for r in attn if r["seq"] == seq and not r.get("failed")}
            s, f = by.get("sdpa"), by.get("flex_attention")
            verdict = ("n/a" if not (s and f) else
                       f"flex / sdpa {f / s:.2f}× → {'flex_attention' if f > 1.05 * s else 'sdpa'}")
            lines.append(f"- seq {seq}: {verdict}")
        lines += ["", "Set `model.loading.CUDA_PACKED_ATTENTION` to the winner at both lengths.", ""]
    comp = load(root / "compile.jsonl")
    if comp:
        lines += ["### Regional torch.compile of the decoder layers", ""] + throughput_table(comp) + [""]
    mem = load(root / "memory_4b.jsonl")
    if mem:
        lines += ["### Qwen3-4B: paged 8-bit AdamW + Liger + checkpointing vs the old system's 18.6 GB", ""]
        lines += throughput_table(mem) + [""]
        for r in mem:
            if r.get("peak_bytes") and not r.get("oom"):
                lines.append(f"- NVML peak Δ {r['peak_bytes'] / 1e9:.1f} GB vs 18.6 GB: "
                             f"{'under' if r['peak_bytes'] < OLD_SYSTEM_PEAK else 'OVER'}")
        lines.append("")
    cal = calibration(through + mem)
    if cal:
        lines += ["### VRAM estimator: activation constant implied by the measured peaks", ""] + cal + [""]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
