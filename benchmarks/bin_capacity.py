"""Can the model learn BIN level 2 at all? Training alone, without the loop, per model size.

    .venv/bin/python benchmarks/bin_capacity.py [--minutes 25] [--variants tiny,wide] [--write]

The unattended loop plateaus on BIN level 2 (add, subtract and multiply of 0–20) at 0.4–0.55 on the built-in
tiny model. This separates capacity from the loop: each variant trains in-process (``model.train.train_chunk``,
one CPU thread each, all variants at once, so they share the box equally) on level-2 curriculum files with 20%
level-1 replay — the files the loop would generate — in chunks of ``--chunk-steps`` steps, and after each chunk
evaluates levels 1 and 2 (``model.evaluate.evaluate``: the fixed held-out eval sets) with the accuracy per
operation. It stops at ``--minutes`` of wall time. The settings are the repo's ``dojo.yaml`` (rows of 128 tokens,
no system prompt, micro-batch 8); a variant changes only the model (a copy of the tiny model's directory with
another ``config.json`` and ``model.init: random``), the learning rate, ``train`` settings, or what each file
mixes in besides level 2 (``mix``; default 20% from level 1).

| variant | layers × hidden (heads, kv heads) | parameters |
|---|---|---|
| tiny | 4 × 128 (4, 2) — the built-in model | ~0.9 M |
| tiny-lr1e-3 | the same, learning rate 1e-3 | |
| wide | 4 × 256 (8, 4), MLP 768 | ~3.3 M |
| deep | 8 × 128 (4, 2) | ~1.7 M |
| tiny-wd0.1, tiny-wd1 | the built-in model, AdamW weight decay 0.1 or 1.0 | |
| tiny-muon | the built-in model, Muon for the hidden matrices (AdamW for the rest), weight decay 0.1 | |
| tiny-ahead (-wd0.1) | the built-in model; 40% of each file from level 3 instead of 20% from level 1 (weight decay 0.1) | |

``--write`` appends the table to docs/benchmarks.md with the command, machine and date.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = {
    "tiny": {"model": {}, "lr": None},
    "tiny-lr1e-3": {"model": {}, "lr": 1e-3},
    "wide": {"model": {"hidden_size": 256, "intermediate_size": 768, "num_attention_heads": 8,
                       "num_key_value_heads": 4}, "lr": 2e-3},
    "deep": {"model": {"num_hidden_layers": 8, "layer_types": ["full_attention"] * 8}, "lr": None},
    "tiny-wd0.1": {"model": {}, "lr": None, "train": {"weight_decay": 0.1}},
    "tiny-wd1": {"model": {}, "lr": None, "train": {"weight_decay": 1.0}},
    "tiny-muon": {"model": {}, "lr": None, "train": {"optimizer": "muon", "weight_decay": 0.1}},
    # Level 2's space is 1,113 problems; these draw 40% of each file from level 3's (10-100, never a held-out
    # problem of any level) instead of level 1's, so the model sees ~24x as many distinct problems.
    "tiny-ahead": {"model": {}, "lr": None, "mix": {"levels": (3,), "share": 0.4}},
    "tiny-ahead-wd0.1": {"model": {}, "lr": None, "train": {"weight_decay": 0.1},
                         "mix": {"levels": (3,), "share": 0.4}},
}
DEFAULT_MIX = {"levels": (1,), "share": 0.2}  # the loop's replay of the mastered level


def model_dir(folder: Path, changes: dict) -> Path | None:
    """A copy of the tiny model's directory with ``changes`` in config.json (None: the built-in model as is)."""
    if not changes:
        return None
    from dojo.config import TINY_MODEL_DIR

    out = folder / "model"
    shutil.copytree(TINY_MODEL_DIR, out, ignore=shutil.ignore_patterns("model.safetensors"))
    conf = json.loads((out / "config.json").read_text())
    conf.update(changes)
    (out / "config.json").write_text(json.dumps(conf, indent=2))
    return out


def make_cfg(folder: Path, name: str):
    from dojo import config

    data = yaml.safe_load((ROOT / "dojo.yaml").read_text(encoding="utf-8")) or {}
    data["storage"] = {"root": str(folder / "root")}
    variant = VARIANTS[name]
    path = model_dir(folder, variant["model"])
    if path is not None:
        data["model"] = {"name_or_path": str(path), "init": "random"}
    if variant["lr"]:
        data.setdefault("train", {})["learning_rate"] = variant["lr"]
    data.setdefault("train", {}).update(variant.get("train", {}))
    data.setdefault("eval", {})["show_failures"] = 10_000
    return config.from_dict(data, env={})


def per_op(level_result: dict, level: int) -> dict:
    """Accuracy per operation from the eval set and its (complete) failure list."""
    from skills import bin as bin_skill

    failed = {f["prompt"] for f in level_result["failures"]}
    ops: dict[str, list[int]] = {}
    for p in bin_skill.eval_problems(level):
        op = p.prompt.split("Compute:", 1)[-1].strip().split("(", 1)[0]
        ops.setdefault(op, [0, 0])
        ops[op][0] += p.prompt not in failed
        ops[op][1] += 1
    return {op: round(c / n, 2) for op, (c, n) in ops.items()}


def run_variant(name: str, minutes: float, chunk_steps: int, out: Path) -> None:
    import torch

    from dojo.generate import generate_file
    from model.checkpoint import candidates
    from model.evaluate import evaluate
    from model.train import train_chunk

    folder = Path(tempfile.mkdtemp(prefix=f"capacity-{name}-"))
    cfg = make_cfg(folder, name)
    torch.set_num_threads(1)
    started = time.monotonic()
    curve, size = [], params(cfg)
    seed = 0
    while time.monotonic() - started < minutes * 60:
        seed += 1
        mix = VARIANTS[name].get("mix", DEFAULT_MIX)
        data = generate_file("bin", 2, cfg.curriculum.examples_per_file, seed, folder / f"l2_s{seed}.jsonl",
                             replay_levels=mix["levels"], replay_share=mix["share"])
        result = train_chunk(cfg, data, chunk_steps)
        report = evaluate(cfg, result.checkpoint, "bin", [1, 2])
        levels = report["skills"]["bin"]["levels"]
        point = {"step": result.step, "minutes": round((time.monotonic() - started) / 60, 1),
                 "loss": round(result.train_loss, 4),
                 "l1": levels["1"]["accuracy"], "l2": levels["2"]["accuracy"], "l2_ops": per_op(levels["2"], 2)}
        curve.append(point)
        print(name, json.dumps(point), flush=True)
        out.write_text(json.dumps({"variant": name, "curve": curve, "params": size}))
        for old in candidates(cfg.root)[:-1]:
            shutil.rmtree(old, ignore_errors=True)        # keep the disk small: only the newest is trained on
    shutil.rmtree(folder, ignore_errors=True)


def params(cfg) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    conf = AutoConfig.from_pretrained(cfg.model.name_or_path)
    model = AutoModelForCausalLM.from_config(conf)
    return sum(p.numel() for p in model.parameters())


def table(results: list[dict]) -> list[str]:
    lines = ["| variant | parameters | steps | minutes | best L2 (step) | last L2 | last L1 | last L2 by op | "
             "steps to L2 ≥ 0.8 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        curve = r["curve"]
        if not curve:
            lines.append(f"| {r['variant']} | {r['params']:,} | 0 | – | – | – | – | – | – |")
            continue
        best = max(curve, key=lambda p: p["l2"])
        last = curve[-1]
        reached = next((p["step"] for p in curve if p["l2"] >= 0.8), None)
        ops = ", ".join(f"{op} {acc:.2f}" for op, acc in last["l2_ops"].items())
        lines.append(f"| {r['variant']} | {r['params']:,} | {last['step']} | {last['minutes']} | "
                     f"{best['l2']:.2f} ({best['step']}) | {last['l2']:.2f} | {last['l1']:.2f} | {ops} | "
                     f"{reached if reached is not None else 'not reached'} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=25.0, help="wall time per variant (all run at once)")
    parser.add_argument("--variants", default="tiny,wide", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--chunk-steps", type=int, default=300, help="optimizer steps between evaluations")
    parser.add_argument("--write", action="store_true", help="append the table to docs/benchmarks.md")
    parser.add_argument("--variant", help=argparse.SUPPRESS)      # a child process: run this one variant
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        run_variant(args.variant, args.minutes, args.chunk_steps, Path(args.out))
        return 0
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    work = Path(tempfile.mkdtemp(prefix="capacity-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    started = dt.datetime.now(dt.timezone.utc)
    children = [subprocess.Popen([sys.executable, __file__, "--variant", n, "--out", str(work / f"{n}.json"),
                                  "--minutes", str(args.minutes), "--chunk-steps", str(args.chunk_steps)], env=env)
                for n in names]
    codes = [c.wait() for c in children]
    results = []
    for n in names:
        f = work / f"{n}.json"
        results.append(json.loads(f.read_text()) if f.exists() else {"variant": n, "curve": [], "params": 0})
    lines = table(results)
    print("\n".join(lines))
    if args.write:
        cmd = "python benchmarks/bin_capacity.py " + " ".join(a for a in (argv or sys.argv[1:]))
        head = [f"\n## BIN level 2 capacity: training alone per model size — {started:%Y-%m-%d %H:%M} UTC\n",
                f"`{cmd.strip()}` on {platform.node()} ({os.cpu_count()} CPU cores, no GPU), {len(names)} variants "
                f"at once, one thread each, {args.minutes:g} min each, an evaluation every {args.chunk_steps} steps. "
                "Level-2 files with 20% level-1 replay unless the variant mixes otherwise (see the script's "
                "docstring), the repo's dojo.yaml otherwise.\n"]
        with open(ROOT / "docs" / "benchmarks.md", "a", encoding="utf-8") as f:
            f.write("\n".join(head + lines) + "\n")
        (ROOT / "docs" / "bin_capacity.json").write_text(json.dumps(results, indent=1))
    return 0 if all(c == 0 for c in codes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
