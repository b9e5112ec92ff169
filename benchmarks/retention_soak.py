"""Storage stays bounded: N chunks of the real loop on the tiny model (train a chunk, evaluate it, record the
curriculum, decide promotion) with `dojo maintenance --apply` after every chunk, and the storage root's size
after each — against what the same run would hold without retention (what is on disk + everything removed so
far), measured in the same run.

    python benchmarks/retention_soak.py [--chunks 12] [--steps 40] [--keep-last 3] [--out docs/operations.md]

Everything happens in a temporary storage root that is removed afterwards. Prints a markdown table; with
``--out`` the table replaces the block between the ``retention-soak`` markers of that file.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BEGIN, END = "<!-- retention-soak:begin -->", "<!-- retention-soak:end -->"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", type=int, default=12)
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps per chunk")
    ap.add_argument("--keep-last", type=int, default=3, help="retention.keep_last_checkpoints")
    ap.add_argument("--out", help="a markdown file whose retention-soak block is replaced with the table")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from dojo import config, maintenance, steps
    from dojo.generate import generate_file
    from dojo.storage import usage
    from model import checkpoint as ckpt
    from model.train import train_chunk

    rows, started = [], time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        cfg = config.from_dict({"storage": {"root": str(home)}, "eval": {"max_new_tokens": 16},
                                "retention": {"keep_last_checkpoints": args.keep_last}}, env={})
        data = generate_file("bin", 1, 2000, 1, Path(tmp) / "bin1.jsonl")
        removed_total = 0
        for chunk in range(1, args.chunks + 1):
            result = train_chunk(cfg, data, steps=args.steps)
            out = steps.evaluate_and_promote(cfg, result.checkpoint.name)
            done = maintenance.apply(cfg, maintenance.plan(cfg))
            removed_total += sum(r.bytes for r in done)
            on_disk = sum(usage(home).values())
            rows.append({"chunk": chunk, "step": out["step"], "acc": out["levels"]["1"]["accuracy"],
                         "promoted": out["promoted"], "checkpoints": len(ckpt.candidates(home)),
                         "on_disk": on_disk, "without": on_disk + removed_total})
            print(f"chunk {chunk}: {rows[-1]}", flush=True)
    minutes = (time.monotonic() - started) / 60
    mib = 2 ** 20
    table = [f"`python benchmarks/retention_soak.py --chunks {args.chunks} --steps {args.steps} --keep-last "
             f"{args.keep_last}` — {dt.date.today()}, {platform.machine()} {os.cpu_count()} CPUs, tiny model, "
             f"{minutes:.1f} min in all (train + evaluate + maintenance per chunk):", "",
             "| chunk | step | L1 accuracy | promoted | checkpoints kept | storage with retention | "
             "without retention |", "|---|---|---|---|---|---|---|"]
    table += [f"| {r['chunk']} | {r['step']} | {r['acc']:.3f} | {'yes' if r['promoted'] else 'no'} | "
              f"{r['checkpoints']} | {r['on_disk'] / mib:.1f} MiB | {r['without'] / mib:.1f} MiB |" for r in rows]
    text = "\n".join(table)
    print(text)
    if args.out:
        path = Path(args.out)
        doc = path.read_text(encoding="utf-8")
        if BEGIN not in doc or END not in doc:
            raise SystemExit(f"{path}: no {BEGIN} … {END} block to replace")
        head, rest = doc.split(BEGIN, 1)
        path.write_text(f"{head}{BEGIN}\n{text}\n{END}{rest.split(END, 1)[1]}", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
