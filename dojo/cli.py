"""The ``dojo`` command.

    dojo config show [--docs]                 the resolved config (after dojo.yaml, --config, $DOJO_HOME)
    dojo generate --skill bin --level L --count N --seed S --out FILE
    dojo validate FILE [--depth quick|standard|deep] [--spec NAME]    exit 0 when accepted
    dojo pack-check FILE [--max-length N] [--dump OUT.jsonl]
    dojo train FILE [--steps N]               one chunk from the latest checkpoint (or the base model)
    dojo eval CHECKPOINT --skill bin [--levels 1,2]
    dojo spar CHECKPOINT [--skill S] [--level L] [--problems N]   wrong answers -> examples queued at high priority
    dojo demo                                 generate BIN level 1, train chunks until it is learned, evaluate
    dojo up [--no-run] / dojo down / dojo status    the local Prefect stack (deployments/stack.py)
    dojo up --server-only                     server, pools, deployments, automation only: workers run elsewhere
    dojo worker --pool NAME [--gpus 0,1] [--api-url URL]   a foreground worker, on any host (deployments/worker.py)
    dojo serve [--host H] [--port P]          the Oracle: OpenAI-compatible chat API + learning-curve page
    dojo queue list | add FILE [--priority high|normal|low] | priority ID LEVEL | retry ID | delete ID
    dojo lineage                              rejection stats per generator and validator
    dojo leaderboard [--skill S] [--top N]    evaluated checkpoints ranked (state/leaderboard.jsonl)
    dojo vram [--model ID_OR_DIR] [--max-length N] [--micro-batch B] [--optimizer O] [--lora] [--liger] [--gpu G]
                                              estimated GPU memory of a training run; exit 1 when it does not fit

Every command takes ``--config FILE``. User mistakes print ``dojo: error: …`` naming the file, line, rule and
value, and exit 2; ``pack-check`` exits 1 when a hard masking check fails.
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import time
from pathlib import Path

import yaml

from dojo import config as config_mod
from dojo.generate import generate_file  # noqa: F401 - generate_file is part of the CLI's API
from skills import SKILLS


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", module="torch.utils.checkpoint")


def _levels(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"levels must be comma-separated integers, got {text!r}") from None


# ---------------------------------------------------------------- commands
def cmd_config_show(cfg, args) -> int:
    data = cfg.to_dict()
    if args.docs:
        for key, text in config_mod.docs().items():
            section, name = key.split(".")
            print(f"{key} = {data[section][name]!r}\n    # {text}")
    else:
        print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), end="")
    return 0


def cmd_generate(cfg, args) -> int:
    out = generate_file(args.skill, args.level, args.count, args.seed, Path(args.out), args.force)
    print(f"wrote {args.count} {args.skill} level-{args.level} examples to {out} (+ {out.stem}.meta.json)")
    return 0


def cmd_pack_check(cfg, args) -> int:
    import dataclasses

    from model.data import tokenize_file
    from model.loading import load_tokenizer
    from model.packing import fill_ratio, pack
    from validation.masking import Thresholds, validate_rows

    max_length = args.max_length or cfg.data.max_length
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_length=max_length))
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)
    report, tokenized = tokenize_file(cfg, args.file, tokenizer)
    rows = pack(tokenized, max_length)
    m = cfg.masking
    masking = validate_rows(rows, tokenizer, Thresholds(m.min_masked_ratio, m.max_masked_ratio))
    print(f"{args.file}: {len(report.accepted_lines)} lines → {len(tokenized)} examples (data.multi_turn "
          f"{cfg.data.multi_turn}) → {len(rows)} rows of ≤ {max_length} tokens")
    print(f"the chat template rewrote {report.rewritten_turns} assistant turn(s) (trained as rendered)")
    print(f"fill ratio {fill_ratio(rows, max_length):.3f}, masked ratio {masking.masked_ratio:.3f}")
    print(masking.format())
    if args.dump:
        with open(args.dump, "w", encoding="utf-8") as f:
            for i, row in enumerate(rows):
                f.write(json.dumps({"row": i, "examples": [tokenized[j].source for j in row.examples],
                                    "input_ids": row.input_ids, "labels": row.labels,
                                    "position_ids": row.position_ids}) + "\n")
        print(f"dumped {len(rows)} rows to {args.dump}")
    print("verdict:", "OK" if masking.ok else "FAIL (hard masking check failed; training would refuse this file)")
    return 0 if masking.ok else 1


def cmd_validate(cfg, args) -> int:
    from model.data import check_file

    report, _ = check_file(args.file, cfg, depth=args.depth, spec=args.spec)
    print(report.format(limit=args.show))
    return 0 if report.accepted else 1


def cmd_train(cfg, args) -> int:
    """One chunk, here or as a ``train.processes``-process job (``model.launch``). Under ``accelerate launch``
    every rank prints the same line; ``--result-file``/``--progress-lines`` (hidden) are how a launching parent
    hears from rank 0."""
    from model.launch import PROGRESS_PREFIX, LaunchError, result_json, run_chunk
    from model.train import world

    def progress_line(p: dict) -> None:
        print(PROGRESS_PREFIX + json.dumps(p), flush=True)

    try:
        result = run_chunk(cfg, args.file, steps=args.steps,
                           on_progress=progress_line if args.progress_lines else None, on_output=print)
    except LaunchError as exc:   # the job's output is on the screen already: its ranks' errors once more
        print(f"dojo: error: {exc.summary}", file=sys.stderr)
        return 2
    if args.result_file and world()[0] == 0:
        Path(args.result_file).write_text(result_json(result), encoding="utf-8")
    line = json.dumps({"checkpoint": str(result.checkpoint), "step": result.step, "steps": result.steps,
                       "train_loss": round(result.train_loss, 4),
                       "val_loss": None if result.val_loss is None else round(result.val_loss, 4),
                       "examples_trained": result.examples_trained, "seconds": round(result.seconds, 1)})
    sys.stdout.write(line + "\n")   # one write: the ranks of a launched job share the pipe, lines stay whole
    sys.stdout.flush()
    return 0


def print_eval(report: dict, skill: str) -> None:
    for level, r in report["skills"][skill]["levels"].items():
        note = "  (eval set = whole space, overlaps training)" if r["overlaps_training"] else ""
        print(f"{skill} level {level}: accuracy {r['accuracy']:.3f} ({r['correct']}/{r['n']}), "
              f"partial {r['partial']:.3f}{note}")
    print(f"report: {report['report_path']}")


def cmd_eval(cfg, args) -> int:
    from model.evaluate import evaluate

    report = evaluate(cfg, args.checkpoint, args.skill, args.levels)
    print_eval(report, args.skill)
    return 0


def cmd_spar(cfg, args) -> int:
    from dojo.spar import spar

    out = spar(cfg, args.checkpoint, args.skill, args.level, args.problems)
    print(out["message"])
    if out["file"]:
        print(f"file: {out['file']} (seed {out['seed']})")
    return 1 if out["file"] and not out["accepted"] else 0        # 1: the gate turned the sparring file away


def cmd_merge(cfg, args) -> int:
    from model.loading import merge_adapter

    out = merge_adapter(args.checkpoint, args.out)
    print(f"merged {args.checkpoint} into a full model at {out}")
    return 0


def cmd_up(cfg, args) -> int:
    from deployments import stack

    try:
        stack.up(cfg, getattr(args, "config", None), run=not args.no_run, workers=not args.server_only)
    except RuntimeError as exc:      # the server did not come up, no free port, a prefect command failed
        print(f"dojo: error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_worker(cfg, args) -> int:
    from deployments import worker

    try:
        worker.start(cfg, getattr(args, "config", None), args.pool, args.gpus, args.api_url, args.name)
    except RuntimeError as exc:      # no server answers, no such pool
        print(f"dojo: error: {exc}", file=sys.stderr)
        return 1
    return 0                         # not reached: start() execs the worker


def cmd_down(cfg, args) -> int:
    """Exit 0 also when entries were dropped unsignalled: afterwards the record is clean (the reasons are printed)."""
    from deployments import stack

    stack.down(cfg)
    return 0


def cmd_status(cfg, args) -> int:
    from deployments import stack

    stack.status(cfg)
    return 0


def cmd_serve(cfg, args) -> int:
    from dojo.oracle.app import serve

    serve(cfg, args.host, args.port)
    return 0


def cmd_maintenance(cfg, args) -> int:
    from dojo import maintenance

    todo = maintenance.plan(cfg)
    if args.apply:
        todo.removals = maintenance.apply(cfg, todo)
    print(todo.format(applied=args.apply))
    return 0


def cmd_promote(cfg, args) -> int:
    from dojo.promotion import promote_by_hand
    from model.evaluate import resolve_checkpoint

    path = resolve_checkpoint(cfg, args.checkpoint)        # verified (manifest, hashes) before it is pointed at
    if path.parent.resolve() != (cfg.root / "checkpoints").resolve():
        raise ValueError(f"{path}: only a checkpoint under {cfg.root / 'checkpoints'} can be promoted")
    decision = promote_by_hand(cfg, path, args.reason)
    print(f"promoted {decision.candidate} (was {decision.previous or 'none'}): {decision.reason}")
    return 0


def cmd_demo(cfg, args) -> int:
    """BIN level 1 end to end: generate, train in chunks (exact resume between them), evaluate each chunk."""
    from model.evaluate import evaluate
    from model.train import train_chunk

    data = cfg.root / "demo" / f"bin_level1_{args.count}_seed{args.seed}.jsonl"
    if not data.exists():
        generate_file("bin", 1, args.count, args.seed, data)
    print(f"data: {data}")
    spent, accuracy = 0.0, 0.0
    while spent < args.minutes * 60 and accuracy < args.target:
        result = train_chunk(cfg, data, steps=args.chunk_steps or cfg.pipeline.steps_per_chunk or None)
        spent += result.seconds
        report = evaluate(cfg, result.checkpoint, "bin", [1])
        accuracy = report["skills"]["bin"]["levels"]["1"]["accuracy"]
        print(f"step {result.step}: train loss {result.train_loss:.4f}, level-1 accuracy {accuracy:.3f} "
              f"after {spent / 60:.1f} min of training")
    verdict = "learned" if accuracy >= args.target else "not yet learned"
    print(f"BIN level 1 {verdict}: accuracy {accuracy:.3f} (target {args.target}) in {spent / 60:.1f} min")
    return 0 if accuracy >= args.target else 1


def cmd_queue_list(cfg, args) -> int:
    from dojo import queue

    print(queue.format_list(queue.list_entries(cfg)))
    return 0


def cmd_queue_add(cfg, args) -> int:
    from dojo.gate import admit

    a = admit(cfg, args.file, priority=args.priority)
    print(a.report)
    e = a.entry
    if not a.accepted:
        print(f"rejected: {e.id} {e.name} is in failed/ with its reasons: {e.path}")
        return 1
    kept = f"; {a.rejected_lines} rejected line(s) kept in {a.rejected_path}" if a.rejected_lines else ""
    print(f"queued {e.id} {e.name} ({e.examples} examples) at priority {e.priority}: {e.path}{kept}")
    return 0


def cmd_queue_priority(cfg, args) -> int:
    from dojo import queue

    e = queue.set_priority(cfg, args.id, args.level)
    print(f"{e.id} {e.name} is queued at priority {e.priority}")
    return 0


def cmd_queue_retry(cfg, args) -> int:
    from dojo import queue
    from dojo.gate import gate_depth
    from model.data import check_file

    e = queue.retry(cfg, args.id, lambda path: check_file(path, cfg, gate_depth(cfg, None))[0])
    print(f"{e.id} {e.name} passed validation and is queued again at priority {e.priority}")
    return 0


def cmd_queue_delete(cfg, args) -> int:
    from dojo import queue

    e = queue.delete(cfg, args.id)
    print(f"moved {e.id} {e.name} to trash: {e.path}")
    return 0


def cmd_lineage(cfg, args) -> int:
    from dojo import lineage_stats

    print(lineage_stats.format_table(lineage_stats.load(cfg)))
    return 0


def cmd_leaderboard(cfg, args) -> int:
    from dojo import leaderboard

    if args.skill is not None and args.skill not in SKILLS:
        raise ValueError(f"--skill {args.skill!r}: use one of {', '.join(SKILLS)}")
    if args.top is not None and args.top < 1:
        raise ValueError(f"--top {args.top}: use a number >= 1")
    rows = leaderboard.load(cfg.root)
    print(leaderboard.format_table(leaderboard.ranked(rows, args.skill, args.top)))
    warning = leaderboard.overfitting(rows, cfg.eval.overfit_gap)
    if warning:
        print(f"warning: {warning}")
    return 0


def cmd_vram(cfg, args) -> int:
    from model import vram

    config = vram.load_config(args.model or cfg.model.name_or_path)
    gpu_bytes, label = vram.parse_gpu(args.gpu) if args.gpu else (vram.detect_gpu_bytes(), "the detected GPU")
    # flags override; otherwise the configured run is what gets sized
    shape = (config, args.max_length or cfg.data.max_length, args.micro_batch or cfg.train.micro_batch_size,
             args.optimizer or cfg.train.optimizer)
    kwargs = dict(dtype=args.dtype, lora=args.lora or cfg.model.lora, lora_rank=args.lora_rank,
                  liger=args.liger or cfg.model.liger == "on")
    setting = False if args.no_checkpointing else cfg.model.gradient_checkpointing
    if setting == "auto" and gpu_bytes is None:   # what training would do on an unknown GPU
        checkpointing, why = True, "auto: on (no GPU given or detected)"
    else:
        checkpointing, why = vram.choose_checkpointing(setting, "cuda", *shape, gpu_bytes=gpu_bytes, **kwargs)
    est = vram.estimate(*shape, gradient_checkpointing=checkpointing, **kwargs)
    print(f"gradient checkpointing {why}")
    print(est.format(gpu_bytes, label if gpu_bytes is not None else None))
    return 0 if gpu_bytes is None or est.fits(gpu_bytes) else 1


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subparser's default must not overwrite a --config given before the subcommand
    common.add_argument("--config", default=argparse.SUPPRESS,
                        help="config YAML (default: $DOJO_CONFIG, then ./dojo.yaml)")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error instead of one line")
    parser = argparse.ArgumentParser(prog="dojo", description="Continuous fine-tuning for small chat LLMs.",
                                     parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("config", help="show the resolved config", parents=[common])
    csub = p.add_subparsers(dest="action", required=True)
    show = csub.add_parser("show", help="print the resolved config", parents=[common])
    show.add_argument("--docs", action="store_true", help="one line of documentation per key")
    show.set_defaults(func=cmd_config_show)

    p = sub.add_parser("generate", help="generate a skill's training data", parents=[common])
    p.add_argument("--skill", required=True, choices=sorted(SKILLS))
    p.add_argument("--level", required=True, type=int)
    p.add_argument("--count", required=True, type=int)
    p.add_argument("--seed", required=True, type=int)
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("pack-check", help="pack a file and run the masking validators", parents=[common])
    p.add_argument("file")
    p.add_argument("--max-length", type=int)
    p.add_argument("--dump", help="write every packed row (input_ids, labels, position_ids) as JSONL")
    p.set_defaults(func=cmd_pack_check)

    p = sub.add_parser("validate", help="check a data file against its spec (exit 0 when accepted)",
                       parents=[common])
    p.add_argument("file")
    p.add_argument("--depth", choices=["quick", "standard", "deep"], help="default: validation.depth")
    p.add_argument("--spec", help="chat_sft_v1, completion_v1 or syllo_v1 (default: the sidecar's spec)")
    p.add_argument("--show", type=int, default=20, help="rejected lines and warnings listed")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("train", help="train one chunk on a file", parents=[common])
    p.add_argument("file")
    p.add_argument("--steps", type=int, help="optimizer steps (default: train.epochs passes over the file)")
    p.add_argument("--result-file", help=argparse.SUPPRESS)                       # model/launch.py's children
    p.add_argument("--progress-lines", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on a skill's eval sets", parents=[common])
    p.add_argument("checkpoint", help="checkpoint path, name under checkpoints/, or 'latest'")
    p.add_argument("--skill", default="bin", choices=sorted(SKILLS))
    p.add_argument("--levels", type=_levels, help="comma-separated, e.g. 1,2 (default: up to the trained level)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("spar", help="ask a checkpoint fresh problems; queue its wrong answers as lessons (high "
                                    "priority, through the gate)", parents=[common])
    p.add_argument("checkpoint", help="checkpoint path, name under checkpoints/, or 'latest'")
    p.add_argument("--skill", choices=sorted(SKILLS), help="default: the checkpoint's skill")
    p.add_argument("--level", type=int, help="default: the skill's training level")
    p.add_argument("--problems", type=int, help="problems asked (default: spar.problems)")
    p.set_defaults(func=cmd_spar)

    p = sub.add_parser("merge", help="fold a LoRA adapter checkpoint into a full model directory", parents=[common])
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("up", help="start the local Prefect stack and train/continuous", parents=[common])
    p.add_argument("--no-run", action="store_true", help="bring the stack up without starting train/continuous")
    p.add_argument("--server-only", action="store_true",
                   help="server, pools, deployments and automation only: no local worker, no run (workers on "
                        "other hosts: dojo worker)")
    p.set_defaults(func=cmd_up)
    p = sub.add_parser("worker", help="a foreground worker for one pool, against a local or remote server",
                       parents=[common])
    p.add_argument("--pool", required=True, help="work pool to take runs from (pipeline.train_pool or eval_pool)")
    p.add_argument("--gpus", help="CUDA_VISIBLE_DEVICES for this worker's runs, e.g. 0 or 0,1 (wins over the "
                                  "deployment's; default: the deployment's)")
    p.add_argument("--api-url", help="the Prefect server, http://HOST:4200/api (default: $PREFECT_API_URL, then "
                                     "this home's dojo up server)")
    p.add_argument("--name", help="worker name (default: POOL@HOSTNAME[-gpuN])")
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser("down", help="stop the processes `dojo up` started", parents=[common])
    p.set_defaults(func=cmd_down)
    p = sub.add_parser("status", help="server, pools, workers, queue, curriculum, promoted checkpoint",
                       parents=[common])
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("maintenance", help="retention: show what would be removed (--apply removes it)",
                       parents=[common])
    p.add_argument("--apply", action="store_true", help="remove it (default: a dry run that removes nothing)")
    p.set_defaults(func=cmd_maintenance)
    p = sub.add_parser("promote", help="promote (or roll back to) a checkpoint by hand", parents=[common])
    p.add_argument("checkpoint", help="checkpoint name under checkpoints/, its path, or 'latest'")
    p.add_argument("--reason", required=True, help="why (recorded in state/promotions.jsonl)")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("serve", help="the Oracle: OpenAI-compatible chat API for any checkpoint, and its page",
                       parents=[common])
    p.add_argument("--host", help="address to bind (default: serve.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: serve.port)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="BIN level 1 end to end on the configured (tiny) model", parents=[common])
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--chunk-steps", type=int, help="optimizer steps per chunk (default: pipeline.steps_per_chunk)")
    p.add_argument("--minutes", type=float, default=10.0, help="training time budget")
    p.add_argument("--target", type=float, default=0.8)
    p.set_defaults(func=cmd_demo)

    levels = ("high", "normal", "low")
    p = sub.add_parser("queue", help="the data queue: list, add, priority, retry, delete", parents=[common])
    qsub = p.add_subparsers(dest="action", required=True)
    q = qsub.add_parser("list", help="every file by priority, then processing/done/failed/trash", parents=[common])
    q.set_defaults(func=cmd_queue_list)
    q = qsub.add_parser("add", help="copy a data file (and its sidecar) into the queue", parents=[common])
    q.add_argument("file")
    q.add_argument("--priority", default="normal", choices=levels)
    q.set_defaults(func=cmd_queue_add)
    q = qsub.add_parser("priority", help="move a queued file to another priority", parents=[common])
    q.add_argument("id", help="ID or a unique prefix of at least 4 characters")
    q.add_argument("level", choices=levels)
    q.set_defaults(func=cmd_queue_priority)
    q = qsub.add_parser("retry", help="validate a failed file again; queue it when it passes", parents=[common])
    q.add_argument("id", help="ID or a unique prefix of at least 4 characters")
    q.set_defaults(func=cmd_queue_retry)
    q = qsub.add_parser("delete", help="move a file to trash (never while it is being trained)", parents=[common])
    q.add_argument("id", help="ID or a unique prefix of at least 4 characters")
    q.set_defaults(func=cmd_queue_delete)

    p = sub.add_parser("lineage", help="rejection stats per generator and validator", parents=[common])
    p.set_defaults(func=cmd_lineage)

    p = sub.add_parser("leaderboard", help="evaluated checkpoints ranked: accuracy per level, promotion, probes, "
                                           "losses", parents=[common])
    p.add_argument("--skill", help="only this skill's checkpoints")
    p.add_argument("--top", type=int, help="at most N rows")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("vram", help="estimate the GPU memory of a training run (exit 1 when it does not fit)",
                       parents=[common])
    p.add_argument("--model", help="Qwen/Qwen3-0.6B, Qwen/Qwen3-4B or an HF model directory "
                                   "(default: model.name_or_path)")
    p.add_argument("--max-length", type=int, help="tokens per row (default: data.max_length)")
    p.add_argument("--micro-batch", type=int, help="rows per forward pass (default: train.micro_batch_size)")
    p.add_argument("--optimizer", choices=["adamw", "paged_adamw_8bit", "muon"], help="default: train.optimizer")
    p.add_argument("--lora", action="store_true", help="train a LoRA adapter (q/k/v/o/gate/up/down)")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--no-checkpointing", action="store_true", help="without gradient checkpointing")
    p.add_argument("--liger", action="store_true", help="Liger fused linear cross-entropy (no full logits)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--gpu", help="rtx4090, rtx3090, h100, a100-40, ... or bytes (default: the detected GPU)")
    p.set_defaults(func=cmd_vram)
    return parser


OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space and run the command again",
    errno.EDQUOT: "the disk quota is exceeded: free some space and run the command again",
    errno.EROFS: "the file system is read-only: point storage.root (or the path) at a writable place",
    errno.EACCES: "permission denied: check the owner and mode of that path",
    errno.EPERM: "operation not permitted: check the owner and mode of that path",
    errno.ENAMETOOLONG: "the file name is too long for the file system: rename the file",
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.EISDIR: "it is a directory, not a file",
}


def clip(text: str, limit: int) -> str:
    """At most ``limit`` characters of an error (a hostile input must not flood the terminal), with control
    characters escaped line by line (a file name cannot drive the terminal; the report's own lines stay)."""
    from dojo.text import printable

    text = "\n".join(printable(line) for line in text.split("\n"))
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit} more characters)"


def explain(exc: BaseException) -> str:
    """One line for a known failure: the file involved and what to do."""
    if isinstance(exc, OSError):
        where = " → ".join(str(f) for f in (exc.filename, exc.filename2) if f) or "(no file named by the system)"
        hint = OS_HINTS.get(exc.errno, exc.strerror or str(exc))
        return clip(f"{where}: {exc.strerror or exc} ({hint})", 2000)
    return clip(str(exc), 20000)


def main(argv: list[str] | None = None) -> int:
    """The `dojo` command. Known failures (bad input, bad config, full or read-only disks, locks) become one
    line on stderr naming the file and what to do, exit code 2; anything else is a bug: one line and exit 1.
    ``--debug`` shows the traceback instead."""
    from dojo.storage import LockedError, apply_umask
    from validation.errors import DataError

    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False)
    umask = os.umask(0)
    os.umask(umask)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)   # one line per API call drowns `dojo status`
    try:
        cfg = config_mod.load(getattr(args, "config", None))
        apply_umask(cfg)                    # folders 0700, files 0600 under the root (storage.umask)
        if args.command not in ("config", "generate", "queue", "lineage", "leaderboard", "up", "down", "status",
                                "vram", "worker"):
            _quiet_libraries()
        started = time.monotonic()
        code = args.func(cfg, args)
        logging.getLogger("dojo").debug("%s took %.1fs", args.command, time.monotonic() - started)
        return code
    except (DataError, ValueError, FileExistsError, LockedError, OSError, RecursionError) as exc:
        if debug:
            raise
        if isinstance(exc, RecursionError):
            exc = ValueError("the input is nested too deeply to read")
        print(f"dojo: error: {explain(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dojo: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:          # a bug: say so in one line; --debug shows where
        if debug:
            raise
        print(f"dojo: internal error: {type(exc).__name__}: {explain(exc)} (run again with --debug for the "
              f"traceback, and please report it)", file=sys.stderr)
        return 1
    finally:
        os.umask(umask)                     # main() also runs in-process (tests, embedding): leave it as found


if __name__ == "__main__":
    sys.exit(main())
