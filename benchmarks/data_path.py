"""Tokenize once: claim → first optimizer step on a large file with the real Qwen3 tokenizer, first chunk vs a
later chunk, and peak RSS — this code ("after") against an earlier commit ("before") in the same run.

    python benchmarks/data_path.py [--examples 100000] [--before 5ee6b18] [--out docs/benchmarks.md]

Model: the real Qwen3 tokenizer and chat template (``../shared/qwen3-tokenizer``, or $DOJO_QWEN3_TOKENIZER) on a
tiny Qwen3 (hidden 64, 2 layers; its random weights saved once so both versions load the same model). Data:
``--examples`` real-shaped chat_sft_v1 lines (single-turn QA with a system prompt, plain two-turn chats, short
classification), content the older code also accepts, so both versions train the same file.

Each scenario runs in a fresh Python process (``--scenario``, re-invoking this file with the version's code on
``sys.path``) and reports its wall time to the first optimizer step and its peak RSS (``ru_maxrss``):

``admit``         ``dojo queue add``: the gate checks the file (STANDARD) and queues it
``first_chunk``   claim → claim-time re-check (``check_claimed``) → ``train_chunk`` → first optimizer step
``later_chunk``   ``dojo train FILE`` on the same file again → first optimizer step (a chunk on a file already seen)
``cold_chunk``    ``dojo train FILE`` on a file never seen (no tokenized cache) → first optimizer step
``data_only``     in one process, after imports and the tokenizer load: the data path of a chunk alone (file →
                  checked, packed rows), on a file never seen, then again on the same file (``--only data_only``)

The goal of the data-path issue: a later chunk starts in ≤ 10% of the first (cold) one's time.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
QWEN3 = Path(os.environ.get("DOJO_QWEN3_TOKENIZER") or REPO.parent / "shared" / "qwen3-tokenizer")
SCENARIOS = ("admit", "first_chunk", "later_chunk", "cold_chunk")
EXTRA = ("data_only",)


class FirstStep(Exception):
    """Raised from on_progress at the first optimizer step: the measurement ends there."""


# ---------------------------------------------------------------- setup (this code)
def write_data(path: Path, n: int, salt: str = "") -> Path:
    """n real-shaped chat_sft_v1 lines + a sidecar naming the spec."""
    topics = ["rivers", "bridges", "volcanoes", "libraries", "orchards", "tides", "glaciers", "markets"]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            topic = topics[i % len(topics)]
            kind = i % 3
            if kind == 0:
                messages = [{"role": "system", "content": "You are a concise encyclopedia."},
                            {"role": "user", "content": f"{salt}Question {i}: what should a visitor know about "
                                                        f"the {topic} of region {i % 97}?"},
                            {"role": "assistant", "content": f"The {topic} of region {i % 97} are best seen in "
                                                             f"spring; guided walks start at {8 + i % 4} am and "
                                                             f"last about {1 + i % 3} hours, entry {i % 50} euros."}]
            elif kind == 1:
                messages = [{"role": "user", "content": f"{salt}Give me one fact about {topic} ({i})."},
                            {"role": "assistant", "content": f"Fact {i}: {topic} change slowly over decades."},
                            {"role": "user", "content": "And another one, please?"},
                            {"role": "assistant", "content": f"Fact {i + 1}: people have mapped {topic} for "
                                                             f"centuries, with ever finer detail."}]
            else:
                review = f"{salt}Review {i}: the tour of the {topic} was long, the guide knew a lot, the bus was late."
                messages = [{"role": "user", "content": review + " Answer with the sentiment and one reason."},
                            {"role": "assistant", "content": f"Mixed: the guide was good but the bus was {i % 9} "
                                                             f"minutes late."}]
            f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    path.with_name(path.stem + ".meta.json").write_text(json.dumps({"spec": "chat_sft_v1", "generator": "bench@1"}))
    return path


def make_model(dest: Path) -> Path:
    """The tiny Qwen3 with the real tokenizer, its seeded random weights saved (both versions load them)."""
    from model.loading import make_small_qwen3_dir, pick_runtime, random_model

    make_small_qwen3_dir(dest, QWEN3)
    model = random_model(dest, pick_runtime("float32", "sdpa", "off"), seed=1)
    model.save_pretrained(dest)
    return dest


def config_yaml(work: Path, model_dir: Path, root: Path) -> Path:
    path = work / f"{root.name}.yaml"
    path.write_text(f"storage:\n  root: {root}\nmodel:\n  name_or_path: {model_dir}\n  dtype: float32\n"
                    f"  attn_implementation: sdpa\n  gradient_checkpointing: false\n"
                    f"data:\n  max_length: 512\ntrain:\n  micro_batch_size: 1\n  log_every: 1\n"
                    f"validation:\n  depth: standard\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------- one scenario (the version's code)
def scenario(name: str, config: str, data: str) -> dict:
    import dojo
    from dojo import config as C

    assert Path(dojo.__file__).resolve().is_relative_to(Path(os.getcwd()).resolve()), dojo.__file__
    cfg = C.load(config)
    started = time.perf_counter()

    def stop(progress):
        raise FirstStep()

    def chunk(path, **kw):
        from model.train import train_chunk
        try:
            train_chunk(cfg, path, steps=10, on_progress=stop, **kw)
        except FirstStep:
            return
        raise AssertionError("no optimizer step was reported")

    if name == "data_only":
        from model.loading import load_tokenizer
        tokenizer = load_tokenizer(cfg.model.name_or_path)
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            try:
                from model.data import prepare
                rows = prepare(cfg, data, tokenizer).n_rows
            except ImportError:                     # the before code: read, tokenize, pack, check every time
                from model.profiles import resolve
                from model.train import prepare_data
                profile, system_prompt = resolve(cfg.data.profile, cfg.data.system_prompt)
                rows = len(prepare_data(cfg, Path(data), tokenizer, system_prompt, profile.transform).rows)
            times.append(time.perf_counter() - t0)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"scenario": name, "seconds": times[0], "again": times[1], "rows": rows, "peak_rss_mib": rss}
    if name == "admit":
        from dojo.gate import admit
        assert admit(cfg, data).accepted
    elif name == "first_chunk":
        import importlib

        code = Path(os.getcwd())       # dojo.steps (after) or dojo.pipeline (before): whichever this version has
        pipeline = importlib.import_module("dojo.steps" if (code / "dojo" / "steps.py").exists() else "dojo.pipeline")
        claimed = pipeline.claim(cfg)
        outcome = pipeline.check_claimed(cfg, claimed)
        assert outcome.accepted
        extra = {"sha256": outcome.train_sha256} if getattr(outcome, "train_sha256", None) else {}
        chunk(outcome.train_file, **extra)
    else:                                           # later_chunk, cold_chunk: dojo train FILE
        chunk(data)
    seconds = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024          # KiB -> MiB
    return {"scenario": name, "seconds": seconds, "peak_rss_mib": rss}


def run_scenario(code: Path, name: str, config: Path, data: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "DOJO_HOME": ""}
    env.pop("DOJO_HOME")
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--scenario", name, "--config", str(config),
                           "--data", str(data)], cwd=code, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed in {code}:\n{proc.stderr[-6000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_version(label: str, code: Path, work: Path, model_dir: Path, data: Path, cold: Path) -> dict:
    root = work / f"home-{label}"
    config = config_yaml(work, model_dir, root)
    out = {}
    for name in SCENARIOS:
        path = cold if name == "cold_chunk" else data
        out[name] = run_scenario(code, name, config, path)
        print(f"{label:6s} {name:12s} {out[name]['seconds']:8.2f} s  peak RSS {out[name]['peak_rss_mib']:7.0f} MiB",
              flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=100_000)
    ap.add_argument("--before", default="5ee6b18", help="git revision of the 'before' code (a worktree is made)")
    ap.add_argument("--out", type=Path, help="append the result table to this markdown file")
    ap.add_argument("--only", choices=EXTRA, help="run only this extra measurement (printed, not written)")
    ap.add_argument("--scenario", choices=SCENARIOS + EXTRA, help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.scenario:
        sys.path.insert(0, os.getcwd())
        print(json.dumps(scenario(args.scenario, args.config, args.data)))
        return

    sys.path.insert(0, str(REPO))
    work = Path(tempfile.mkdtemp(prefix="dojo-bench-data-"))
    before = work / "before-code"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(before), args.before], check=True,
                   capture_output=True)
    try:
        model_dir = make_model(work / "model")
        data = write_data(work / "bench.jsonl", args.examples)
        cold = write_data(work / "cold.jsonl", args.examples, salt="(cold) ")
        print(f"{args.examples} examples, {data.stat().st_size / 2**20:.1f} MiB; work dir {work}", flush=True)
        if args.only:
            for label, code in (("before", before), ("after", REPO)):
                config = config_yaml(work, model_dir, work / f"home-{label}")
                r = run_scenario(code, args.only, config, cold)
                print(f"{label:6s} {args.only}: first {r['seconds']:.2f} s, again {r['again']:.2f} s, "
                      f"{r['rows']} rows, peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
            return
        results = {"before": run_version("before", before, work, model_dir, data, cold),
                   "after": run_version("after", REPO, work, model_dir, data, cold)}
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(before)], capture_output=True)
    report(args, results, data)


def report(args, results: dict, data: Path) -> None:
    import torch
    import transformers

    b, a = results["before"], results["after"]
    rows = "\n".join(f"| {name} | {b[name]['seconds']:.2f} | {a[name]['seconds']:.2f} | "
                     f"{b[name]['seconds'] / a[name]['seconds']:.1f}× | {b[name]['peak_rss_mib']:.0f} | "
                     f"{a[name]['peak_rss_mib']:.0f} |" for name in SCENARIOS)
    later_vs_cold = a["later_chunk"]["seconds"] / a["cold_chunk"]["seconds"]
    first_vs_cold = a["first_chunk"]["seconds"] / a["cold_chunk"]["seconds"]
    text = f"""
### Tokenize once: claim → first optimizer step — {dt.date.today().isoformat()}

Command: `python benchmarks/data_path.py --examples {args.examples} --before {args.before}`  
Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, transformers {transformers.__version__}  
Data: {args.examples} chat_sft_v1 lines ({data.stat().st_size / 2**20:.1f} MiB; QA with a system prompt, two-turn
chats, short classification), real Qwen3 tokenizer and chat template, tiny Qwen3 (hidden 64, 2 layers),
data.max_length 1024; each scenario in a fresh process; before = commit `{args.before}`, after = this code

| scenario | before s | after s | before / after | before peak RSS MiB | after peak RSS MiB |
|---|---:|---:|---:|---:|---:|
{rows}

After: a later chunk starts in **{100 * later_vs_cold:.1f}%** of a cold chunk's time (goal ≤ 10%); the first
chunk of a queued file (the gate already wrote its tokenized cache, the claim reuses the verdict) in
{100 * first_vs_cold:.1f}%.
"""
    print(text)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
