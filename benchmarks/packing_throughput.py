"""Packed vs padded training throughput on the same data, model and optimizer, in the same run.

    python benchmarks/packing_throughput.py [--steps 30] [--repeats 3] [--model DIR] [--out docs/benchmarks.md]

Data: BIN problems of every level (lengths vary ~2.5x), rendered with the chat template exactly as training
does. dojo: best-fit-decreasing rows of ``--max-length`` tokens, ``--rows`` rows per step, per-example position
ids (block-diagonal attention). Baseline: one example per row, padded to the longest in the batch, 2-D
attention mask (the plain HF way), with the same number of examples per step as dojo's average. Both run
forward + backward + AdamW for ``--steps`` steps, alternating, ``--repeats`` times; the median is reported.
The figure that matters is examples/s (useful work); tokens/s counts padding for the baseline.
"""
from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import time
from pathlib import Path

import torch

from dojo.config import TINY_MODEL_DIR
from model.chat import IGNORE, tokenize_example, with_system_prompt
from model.loading import load_model, load_tokenizer, pick_runtime
from model.packing import collate, pack
from model.train import loss_sum
from skills import bin as bin_skill


def examples(tokenizer, per_level: int):
    out = []
    for level in bin_skill.LEVELS:
        for p in bin_skill.generate(level, per_level, seed=level):
            messages = with_system_prompt(bin_skill.to_chat(p)["messages"], "You are a careful assistant.")
            out.append(tokenize_example(messages, tokenizer, f"bench:{len(out) + 1}"))
    return out


def padded_batch(batch, pad_id: int) -> dict:
    width = max(len(e) for e in batch)
    ids = [list(e.input_ids) + [pad_id] * (width - len(e)) for e in batch]
    labels = [list(e.labels) + [IGNORE] * (width - len(e)) for e in batch]
    mask = [[1] * len(e) + [0] * (width - len(e)) for e in batch]
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


def run(model, batches, steps: int, packed: bool) -> tuple[float, int, int]:
    """(seconds, examples, tokens incl. padding) for ``steps`` optimizer steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    n_examples = n_tokens = 0
    start = time.perf_counter()
    for i in range(steps):
        batch, count = batches[i % len(batches)]
        if packed:
            s, n = loss_sum(model, batch)
        else:
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
            logits, targets = out.logits[:, :-1], batch["labels"][:, 1:]
            s = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                                  ignore_index=IGNORE, reduction="sum")
            n = int((targets != IGNORE).sum())
        (s / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        n_examples += count
        n_tokens += batch["input_ids"].numel()
    return time.perf_counter() - start, n_examples, n_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(TINY_MODEL_DIR))
    parser.add_argument("--per-level", type=int, default=100)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="append the result table to this markdown file")
    args = parser.parse_args()

    runtime = pick_runtime()
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, runtime)
    model.config.use_cache = False
    model.train()
    exs = examples(tokenizer, args.per_level)
    rows = pack(exs, args.max_length)
    packed = [(collate(rows[i:i + args.rows], tokenizer.pad_token_id), sum(len(r.examples) for r in rows[i:i + args.rows]))
              for i in range(0, len(rows) - args.rows + 1, args.rows)]
    per_step = round(sum(c for _, c in packed) / len(packed))
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(exs), generator=gen).tolist()
    padded = [(padded_batch([exs[j] for j in order[i:i + per_step]], tokenizer.pad_token_id), per_step)
              for i in range(0, len(order) - per_step + 1, per_step)]
    to_device = lambda bs: [({k: v.to(runtime.device) for k, v in b.items()}, c) for b, c in bs]  # noqa: E731
    packed, padded = to_device(packed), to_device(padded)

    results = {"dojo (packed BFD)": [], "baseline (padded)": []}
    run(model, packed, 3, True)   # warm-up
    run(model, padded, 3, False)
    for _ in range(args.repeats):
        results["dojo (packed BFD)"].append(run(model, packed, args.steps, True))
        results["baseline (padded)"].append(run(model, padded, args.steps, False))

    def median_rate(rs, idx):
        return statistics.median(r[idx] / r[0] for r in rs)

    real = sum(len(e) for e in exs)
    pad_fill = sum(int(b["attention_mask"].sum()) for b, _ in padded) / sum(b["input_ids"].numel() for b, _ in padded)
    lines = [
        f"### Packed vs padded training throughput — {dt.date.today().isoformat()}",
        "",
        f"Command: `python benchmarks/packing_throughput.py --steps {args.steps} --repeats {args.repeats}`  ",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, device {runtime.device}, "
        f"torch {torch.__version__}; model {Path(args.model).name} ({runtime.dtype}, {runtime.attn_implementation})  ",
        f"Data: {len(exs)} BIN examples, levels 1–7, {min(len(e) for e in exs)}–{max(len(e) for e in exs)} tokens; "
        f"dojo: {args.rows} rows × ≤{args.max_length} tokens per step (≈{per_step} examples, fill "
        f"{real / (len(rows) * args.max_length):.1%}); baseline: {per_step} examples per step padded to the "
        f"longest (real-token share {pad_fill:.1%})",
        "",
        "| configuration | examples/s (median) | tokens/s incl. padding (median) |",
        "|---|---:|---:|",
    ]
    for name, rs in results.items():
        lines.append(f"| {name} | {median_rate(rs, 1):.1f} | {median_rate(rs, 2):.0f} |")
    ratio = median_rate(results["dojo (packed BFD)"], 1) / median_rate(results["baseline (padded)"], 1)
    lines += ["", f"dojo / baseline, examples/s: **{ratio:.2f}×**", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
