"""Memorised or learned? A checkpoint's BIN accuracy on problems it trains on against the held-out eval set.

    .venv/bin/python benchmarks/bin_generalisation.py CHECKPOINT [--config dojo.yaml] [--level 2] [--sample 200]

A level's eval set is held out: curriculum files never contain its problems (``skills.bin``), so a model that
scores far better on the rest of the level's space than on the eval set has memorised what it saw rather than
learned the operation. This answers ``--sample`` problems drawn (seeded) from the level's space minus the eval set,
and the eval set itself, the way ``model.evaluate`` does (greedy, the profile and system prompt the checkpoint
was trained with, ``eval.max_new_tokens``), and prints both accuracies, per operation, and the gap as JSON.
Levels whose whole space is the eval set (level 1) have nothing held out and are refused. CHECKPOINT is a
directory or a name under the storage root of ``--config``.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def accuracy(gen, problems, max_new_tokens: int) -> dict:
    from skills import bin as bin_skill

    right = [s.correct for s in gen.attempt(bin_skill, problems, max_new_tokens)[2]]   # as model.evaluate scores
    ok, n = Counter(), Counter()
    for p, good in zip(problems, right):
        n[p.op] += 1
        ok[p.op] += good
    return {"n": len(problems), "accuracy": round(sum(right) / len(right), 3),
            "by_op": {op: round(ok[op] / n[op], 3) for op in n}}


def training_sample(level: int, sample: int, seed: int = 0) -> list:
    """``sample`` problems of the level's space that curriculum files may contain (no level's held-out problem)."""
    from skills import bin as bin_skill

    if bin_skill.covers_space(level):
        raise ValueError(f"BIN level {level}: the eval set is the whole space; nothing is held out")
    keys = bin_skill.held_out_keys(level)           # what no curriculum or sparring file may contain
    seen = [p for p in bin_skill.enumerate_problems(level) if p.key not in keys]   # ValueError past level 4
    random.Random(seed).shuffle(seen)
    return seen[:sample]


def probe(cfg, checkpoint: str, level: int, sample: int, seed: int = 0) -> dict:
    from model.checkpoint import read_ledger
    from model.evaluate import Generator, resolve_checkpoint
    from skills import bin as bin_skill

    seen = training_sample(level, sample, seed)
    path = resolve_checkpoint(cfg, checkpoint)
    gen = Generator.load(cfg, path, read_ledger(path))
    trained = accuracy(gen, seen, cfg.eval.max_new_tokens)
    unseen = accuracy(gen, bin_skill.eval_problems(level), cfg.eval.max_new_tokens)
    return {"checkpoint": path.name, "level": level, "training_space": trained, "held_out": unseen,
            "gap": round(trained["accuracy"] - unseen["accuracy"], 3)}


def main(argv: list[str] | None = None) -> int:
    from dojo import config

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--config", help="dojo config file (default: the usual lookup)")
    parser.add_argument("--level", type=int, default=2)
    parser.add_argument("--sample", type=int, default=200, help="problems drawn from the training space")
    args = parser.parse_args(argv)
    if args.sample < 1:
        parser.error("--sample must be >= 1")
    cfg = config.load(args.config)
    try:
        print(json.dumps(probe(cfg, args.checkpoint, args.level, args.sample)))
    except ValueError as e:
        print(f"bin_generalisation: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
