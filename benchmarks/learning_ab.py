"""Learning A/B: does sparring, replay, or both make the unattended loop learn faster or forget less?

    .venv/bin/python benchmarks/learning_ab.py [--minutes 15] [--configs baseline,spar,replay,both] [--write]

Runs the real loop — ``flows.train_continuous.continuous`` with ``hand_off="inline"`` and ``max_hours``, so
every checkpoint goes through evaluate/checkpoint (and sparring, when on) in-process — on the tiny model for a
fixed wall time per configuration, each on a fresh temporary storage root with the same seeds, under
``prefect_test_harness`` (a temporary local server; ``--no-harness`` uses the current Prefect API instead).
The settings are the repo's ``dojo.yaml`` (what ``dojo up`` runs) with only these changed:

| configuration | spar.after | curriculum.replay_share |
|---|---|---|
| baseline | off | 0 |
| spar     | every | 0 |
| replay   | off | 0.2 (``--replay``) |
| both     | every | 0.2 |

Per configuration it records: time to master each level (from ``state/curriculum.json``: the evaluation that
advanced it), evaluations and promotions, final accuracy per level (the last evaluation and the promoted
checkpoint), sparring files queued / mixed into curriculum files / retired as stale (sidecars of ``spar@…``
files), and the chunks that trained sparring examples with their count (``state/stream.json``). It prints a
markdown table; ``--write`` appends it to docs/benchmarks.md with the command, the machine, the date and the
wall time per configuration. The table says what happened in this run; with one seed and 15 minutes it is an
indication, not a statistic.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIGS = {"baseline": {"spar": "off", "replay": False}, "spar": {"spar": "every", "replay": False},
           "replay": {"spar": "off", "replay": True}, "both": {"spar": "every", "replay": True}}


def config_file(folder: Path, name: str, args) -> Path:
    """The repo's dojo.yaml with this configuration's storage root, seeds, sparring and replay."""
    data = yaml.safe_load((ROOT / "dojo.yaml").read_text(encoding="utf-8")) or {}
    setup = CONFIGS[name]
    data["storage"] = {"root": str(folder / "root")}
    data.setdefault("train", {})["seed"] = args.seed
    curriculum = data.setdefault("curriculum", {})
    curriculum.update(seed=args.seed, replay_share=args.replay if setup["replay"] else 0.0)
    if args.examples_per_file:
        curriculum["examples_per_file"] = args.examples_per_file
    data["spar"] = {**data.get("spar", {}), "after": setup["spar"]}
    if args.steps_per_chunk:
        data.setdefault("pipeline", {})["steps_per_chunk"] = args.steps_per_chunk
    for item in args.set:                      # the same for every configuration
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        data.setdefault(section, {})[name] = yaml.safe_load(value)
    path = folder / "dojo.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _time(text: str | None) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def spar_counts(cfg) -> dict:
    """Sparring files queued (ever), mixed into curriculum files (``spar.mix``), retired as stale, and the chunks
    that trained sparring examples (``state/stream.json``: a sparring chunk, or a curriculum chunk with some
    mixed in) with the sparring examples they trained."""
    from dojo import queue
    from dojo.sidecar import read_sidecar

    try:
        from dojo.spar import is_spar
    except ImportError:                       # a tree without sparring
        return {"queued": 0, "mixed": 0, "retired": 0, "chunks": 0, "examples": 0}
    queued = mixed = retired = 0
    for entry in queue.list_entries(cfg):
        try:
            meta = read_sidecar(entry.path)
        except ValueError:
            continue
        if not is_spar(meta):
            continue
        queued += 1
        reason = entry.path.with_name(entry.path.stem + ".reason.txt")
        text = reason.read_text(errors="replace") if entry.state == "done" and reason.is_file() else ""
        retired += "stale" in text
        mixed += text.startswith("mixed into")
    stream = Path(cfg.root) / "state" / "stream.json"
    chunks = json.loads(stream.read_text()).get("chunks", []) if stream.is_file() else []
    with_spar = [c for c in chunks if c.get("spar") is True or (c.get("spar_examples") or 0) > 0]
    return {"queued": queued, "mixed": mixed, "retired": retired, "chunks": len(with_spar),
            "examples": sum(c.get("spar_examples") or (c.get("examples", 0) if c.get("spar") else 0)
                            for c in with_spar)}


def collect(cfg_path: Path, started: dt.datetime, wall: float, chunks: int) -> dict:
    """What a finished configuration did, read from its storage root."""
    from dojo import config, leaderboard, promotion

    cfg = config.load(str(cfg_path))
    state = json.loads((cfg.root / "state" / "curriculum.json").read_text()) if (
        cfg.root / "state" / "curriculum.json").is_file() else {"skills": {}}
    mastered = {}
    for skill, s in state["skills"].items():
        for n, index in enumerate(s.get("advanced_at", []), 1):
            when = _time(s["history"][index - 1].get("time")) if 0 < index <= len(s["history"]) else None
            mastered[f"{skill} L{n}"] = round((when - started).total_seconds() / 60, 1) if when else None
    best: dict[str, dict[str, float]] = {}       # the best evaluation at each level while it was trained
    for skill, s in state["skills"].items():
        for h in s.get("history", []):
            level = str(h.get("level"))
            best.setdefault(skill, {})[level] = max(best.get(skill, {}).get(level, 0.0), h.get("accuracy") or 0.0)
    rows = leaderboard.load(cfg.root)
    last = rows[-1]["accuracy"] if rows else {}
    pointer = promotion.current(cfg.root) or {}
    return {"wall_min": round(wall / 60, 2), "chunks": chunks, "evals": len(rows),
            "steps": rows[-1].get("step") if rows else 0, "best_training": best,
            "promotions": sum(1 for d in promotion.history(cfg.root) if d.get("promote")),
            "mastered_min": mastered, "last_eval": last, "promoted_eval": pointer.get("eval", {}),
            "spar": spar_counts(cfg)}


def run_config(name: str, args, keep: Path | None = None) -> dict:
    from flows.train_continuous import continuous

    folder = Path(tempfile.mkdtemp(prefix=f"dojo-ab-{name}-", dir=keep))
    try:
        cfg_path = config_file(folder, name, args)
        started, t0 = dt.datetime.now(dt.timezone.utc), time.monotonic()
        error = None
        try:
            chunks = continuous(max_hours=args.minutes / 60, hand_off="inline", config=str(cfg_path))
        except Exception as e:            # a crash mid-run: report what it did up to then, and the crash
            error = f"{type(e).__name__}: {e}"[:300]
            chunks = len(list((folder / "root" / "checkpoints").glob("checkpoint-*")))
        result = collect(cfg_path, started, time.monotonic() - t0, chunks)
        result["root"] = str(folder / "root") if keep else None
        result["error"] = error
        return result
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)


def run_parallel(names: list[str], args) -> dict:
    """Every configuration at once, each in a process of its own (this script with ``--configs NAME``) against
    the current Prefect API; their results, in ``names`` order. A configuration that crashed mid-run reports
    what it did until then (its ``error`` says why); one that left no result stops the run."""
    import subprocess

    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    out = Path(tempfile.mkdtemp(prefix="dojo-ab-parallel-"))
    procs = {}
    for name in names:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--no-harness", "--configs", name,
               "--minutes", str(args.minutes), "--seed", str(args.seed), "--replay", str(args.replay),
               "--steps-per-chunk", str(args.steps_per_chunk), "--examples-per-file", str(args.examples_per_file),
               "--json", str(out / f"{name}.json")]
        cmd += [arg for item in args.set for arg in ("--set", item)]
        cmd += ["--keep", str(args.keep)] if args.keep else []
        log = open(out / f"{name}.log", "w", encoding="utf-8")
        procs[name] = (subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT), log)
        print(f"== {name}: {args.minutes} min, pid {procs[name][0].pid}, log {out / f'{name}.log'}", flush=True)
    failed = []
    for name, (proc, log) in procs.items():
        proc.wait()                  # exit 1 with a JSON: the run crashed and its row says so (run_config)
        if not (out / f"{name}.json").is_file():
            failed.append(name)
        log.close()
    if failed:
        tails = "\n".join(f"--- {n}:\n" + (out / f"{n}.log").read_text(errors="replace")[-3000:] for n in failed)
        raise SystemExit(f"configurations failed: {', '.join(failed)} (logs in {out})\n{tails}")
    return {name: json.loads((out / f"{name}.json").read_text(encoding="utf-8"))[name] for name in names}


def _accuracy(scores: dict) -> str:
    return "; ".join(f"{skill} " + " ".join(f"L{lv}={a:.2f}" for lv, a in sorted(by.items(), key=lambda x: int(x[0])))
                     for skill, by in scores.items()) or "-"


def table(results: dict[str, dict], args) -> str:
    lines = ["| configuration | spar.after | replay_share | wall (min) | chunks | steps | evals | promotions | "
             "mastered at (min) | best while training a level | last eval | promoted | "
             "spar files queued / mixed / stale | chunks with spar (examples) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        setup = CONFIGS[name]
        mastered = ", ".join(f"{k}: {v}" for k, v in r["mastered_min"].items()) or "none"
        s = r["spar"]
        lines.append(f"| {name} | {setup['spar']} | {args.replay if setup['replay'] else 0} | {r['wall_min']} | "
                     f"{r['chunks']} | {r.get('steps', '-')} | {r['evals']} | {r['promotions']} | {mastered} | "
                     f"{_accuracy(r.get('best_training', {}))} | {_accuracy(r['last_eval'])} | "
                     f"{_accuracy(r['promoted_eval'])} | {s['queued']} / {s['mixed']} / {s['retired']} | "
                     f"{s['chunks']} ({s['examples']}) |")
    lines += [f"\n**{name} crashed after {r['wall_min']} min**, its row is what it did until then: {r['error']}"
              for name, r in results.items() if r.get("error")]
    return "\n".join(lines)


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.node() or 'host'}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {gpu}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="wall time per configuration (default 15)")
    parser.add_argument("--configs", default="baseline,spar,replay,both",
                        help=f"comma-separated, from {', '.join(CONFIGS)}")
    parser.add_argument("--seed", type=int, default=1, help="train.seed and curriculum.seed of every configuration")
    parser.add_argument("--replay", type=float, default=0.2, help="curriculum.replay_share when replay is on")
    parser.add_argument("--steps-per-chunk", type=int, default=0, help="pipeline.steps_per_chunk (0: dojo.yaml's)")
    parser.add_argument("--examples-per-file", type=int, default=0, help="curriculum.examples_per_file (0: default)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="another config value for every configuration (repeatable), e.g. eval.max_new_tokens=24")
    parser.add_argument("--keep", type=Path, help="keep each configuration's storage root under this folder")
    parser.add_argument("--no-harness", action="store_true", help="use the current Prefect API, not a temporary one")
    parser.add_argument("--parallel", action="store_true",
                        help="run the configurations at once, one process each against one Prefect API: the same "
                             "minutes under the same load (each gets a share of the cores)")
    parser.add_argument("--write", action="store_true", help="append the result to docs/benchmarks.md")
    parser.add_argument("--json", type=Path, help="also write the raw results as JSON here")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or not names:
        parser.error(f"--configs: {unknown or 'none given'}; use names from {', '.join(CONFIGS)}")
    if args.minutes <= 0:
        parser.error("--minutes must be > 0")
    bad = [item for item in args.set if "=" not in item or "." not in item.partition("=")[0]]
    if bad:
        parser.error(f"--set {bad[0]!r}: use SECTION.KEY=VALUE, e.g. eval.max_new_tokens=24")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.pop("DOJO_HOME", None)          # each configuration's dojo.yaml names its own root

    def run_all() -> dict:
        if args.parallel and len(names) > 1:
            return run_parallel(names, args)
        results = {}
        for name in names:
            print(f"== {name}: {args.minutes} min", flush=True)
            results[name] = run_config(name, args, args.keep)
            print(json.dumps(results[name]), flush=True)
        return results

    if args.no_harness:
        results = run_all()
    else:
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=120):
            results = run_all()
    text = table(results, args)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    if args.write:
        command = "python benchmarks/learning_ab.py " + " ".join(argv if argv is not None else sys.argv[1:])
        walls = ", ".join(f"{n} {r['wall_min']} min" for n, r in results.items()) + (
            " (all at once, sharing the cores)" if args.parallel and len(results) > 1 else " (one after another)")
        with open(ROOT / "docs" / "benchmarks.md", "a", encoding="utf-8") as f:
            f.write(f"\n## Learning A/B: sparring and replay ({dt.date.today().isoformat()})\n\n"
                    f"`{command.strip()}` on {machine()}; wall time per configuration: {walls}. Tiny model, "
                    f"the repo's dojo.yaml, seed {args.seed}; one run each, so an indication, not a statistic.\n\n"
                    f"{text}\n")
    return 1 if any(r.get("error") for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
