"""Data-gate throughput: ``validate_file`` at QUICK, STANDARD and DEEP against a plain ``json.loads`` loop.

    python benchmarks/validation_throughput.py [--examples 100000] [--repeats 1] [--out docs/benchmarks.md]

Data: ``--examples`` chat_sft_v1 examples of the BIN skill, every level mixed (``skills.bin.generate`` +
``to_chat``, shuffled with a fixed seed), written to a temporary file with a ``chat_sft_v1`` sidecar, as
``dojo generate`` would. Each depth validates the whole file (STANDARD and DEEP tokenize every example with the
configured tokenizer, the built-in tiny Qwen3 one; it is loaded once, before timing, and its load time is
reported apart). The baseline in the same run is the floor any validator pays: read the file and ``json.loads``
every line, nothing else. Reported: seconds and examples/s per configuration (the best of ``--repeats``) and
each depth's throughput as a share of the baseline's.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dojo import config as config_mod  # noqa: E402
from dojo.sidecar import write_sidecar  # noqa: E402
from skills import bin as bin_skill  # noqa: E402
from model.data import validate_file  # noqa: E402
from validation.validate import DEPTHS  # noqa: E402


def write_data(path: Path, n: int, seed: int = 7) -> Path:
    """``n`` BIN examples, levels mixed evenly, shuffled; plus the sidecar."""
    levels = bin_skill.LEVELS
    problems = []
    for i, level in enumerate(levels):
        count = n // len(levels) + (1 if i < n % len(levels) else 0)
        problems += bin_skill.generate(level, count, seed=seed + level)
    random.Random(seed).shuffle(problems)
    with open(path, "w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps(bin_skill.to_chat(p), ensure_ascii=False) + "\n")
    write_sidecar(path, bin_skill.GENERATOR_ID, bin_skill.GENERATOR_VERSION,
                  {"levels": list(levels), "count": n, "seed": seed}, n, spec="chat_sft_v1", skill="bin")
    return path


def baseline(path: Path) -> int:
    """The floor: read the file, json.loads every non-blank line."""
    n = 0
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                json.loads(line)
                n += 1
    return n


def timed(fn, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def versions() -> str:
    import pandera
    import torch
    import transformers

    return f"torch {torch.__version__}, pandera {pandera.__version__}, transformers {transformers.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=1, help="runs per depth; the best is reported")
    parser.add_argument("--baseline-repeats", type=int, default=3)
    parser.add_argument("--depths", default=",".join(DEPTHS), help="comma-separated subset of quick,standard,deep")
    parser.add_argument("--out", help="append the result as a markdown section to this file")
    args = parser.parse_args()
    depths = [d for d in args.depths.split(",") if d]
    assert all(d in DEPTHS for d in depths), depths

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = config_mod.from_dict({}, env={})        # the defaults: tiny model, max_length 512, accept_ratio 0.95
    from model.loading import load_tokenizer

    start = time.perf_counter()
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)
    tokenizer_s = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench_bin_mixed.jsonl"
        start = time.perf_counter()
        write_data(path, args.examples)
        gen_s = time.perf_counter() - start
        size_mb = path.stat().st_size / 1e6
        print(f"data: {args.examples} examples, {size_mb:.1f} MB, generated in {gen_s:.1f}s; "
              f"tokenizer loaded in {tokenizer_s:.2f}s", flush=True)

        base_s, n = timed(lambda: baseline(path), args.baseline_repeats)
        assert n == args.examples
        rows = [("baseline (json.loads only)", base_s, None)]
        print(f"baseline: {base_s:.3f}s, {n / base_s:,.0f} examples/s", flush=True)
        for depth in depths:
            s, report = timed(lambda: validate_file(path, cfg, depth=depth, tokenizer=tokenizer), args.repeats)
            assert report.total == args.examples and report.accepted, report.format(limit=3)
            rows.append((depth, s, report))
            print(f"{depth}: {s:.2f}s, {n / s:,.0f} examples/s, {base_s / s:.4f} of baseline; "
                  f"{len(report.accepted_lines)} accepted, {len(report.rejected)} rejected, "
                  f"warnings {report.warnings_by_rule()}", flush=True)

    if args.out:
        command = "python benchmarks/validation_throughput.py " + " ".join(sys.argv[1:])
        lines = [
            "", f"### Data-gate throughput (`dojo validate`) — {dt.date.today().isoformat()}", "",
            f"Command: `{command.strip()}`  ",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (os.cpu_count), {versions()}  ",
            f"Data: {args.examples} BIN chat_sft_v1 examples, levels 1–7 mixed and shuffled, {size_mb:.1f} MB; "
            f"default config (tiny-qwen3 tokenizer, data.max_length 512); tokenizer load "
            f"({tokenizer_s:.2f}s) not timed; best of {args.repeats} run(s) per depth, "
            f"{args.baseline_repeats} for the baseline", "",
            "| configuration | seconds | examples/s | share of baseline throughput | × baseline time |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, s, _ in rows:
            share = base_s / s
            lines.append(f"| {name} | {s:.2f} | {n / s:,.0f} | {share:.4f} | {s / base_s:,.1f}× |")
        notes = [f"{name}: {len(r.accepted_lines)} accepted, {len(r.rejected)} rejected, warnings "
                 f"{r.warnings_by_rule() or 'none'}" for name, _, r in rows if r is not None]
        lines += ["", "Outcome per depth (every run accepted the file): " + "; ".join(notes) + "."]
        with open(args.out, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
