"""The gate in front of training: validate a file, record its lineage, and admit it to the queue or turn it
away — keeping every line either way.

``admit`` copies the file into a private staging folder first and checks the copy (so a file appended to
meanwhile cannot queue lines that were never checked), at the configured depth but never below STANDARD
(``model/data.py``: the one reader and rule set, every line rendered and tokenized once, the tokenized cache
written for the file that is queued). It writes the outcome — with the verdict key that lets the claim reuse it
— into the sidecar and the lineage statistics, then:

- accepted with no bad lines: the file is queued as it is;
- accepted with some bad lines (valid share ≥ ``validation.accept_ratio``): the valid lines are queued (a new
  file; the sidecar keeps the original's sha256) and the rejected lines go to ``failed/{stem}.rejected.jsonl``
  with their rules and messages;
- rejected: the whole file goes to ``failed/`` with ``{stem}.reason.txt`` holding the report.

The user's own file is never moved or modified.
"""
from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from dojo import lineage_stats, queue
from dojo.sidecar import read_sidecar, sidecar_path
from dojo.storage import copy_private, sha256_file, write_json
from validation.validate import FileReport, write_split


@dataclass(frozen=True)
class Admission:
    entry: queue.QueueEntry          # where the file went (queued or failed)
    accepted: bool
    report: str                      # the human-readable validation report
    rejected_lines: int
    rejected_path: Path | None       # failed/{stem}.rejected.jsonl when some lines were rejected


def record(cfg, data_file: Path, report: FileReport, sha256: str, extra: dict | None = None) -> dict:
    """Sidecar + lineage statistics for one validation; returns the validation dict."""
    from dojo.sidecar import record_validation

    validation = {**report.to_dict(), "sha256": sha256, **(extra or {})}
    meta = record_validation(data_file, validation)
    lineage_stats.record(cfg, meta, validation)
    return validation


def gate_depth(cfg, depth: str | None) -> str:
    """The depth of the gate in front of training: never below STANDARD, because training renders and
    tokenizes every line anyway, and a line the gate accepts must never be refused by training."""
    depth = depth or cfg.validation.depth
    return "standard" if depth == "quick" else depth


def admit(cfg, file: str | Path, priority: str = "normal", depth: str | None = None, tokenizer=None) -> Admission:
    """Copy ``file`` in, check the copy (so what is queued is exactly what was checked), and queue it."""
    from model import data

    src = Path(file)
    queue.sanitize_name(src.name)          # refuse a bad name before doing any work
    meta = read_sidecar(src)               # a broken sidecar is an error, before any work
    staging = Path(cfg.root) / "state" / "staging" / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    build = None
    try:
        staged = staging / queue.sanitize_name(src.name)
        copy_private(src, staged)          # one snapshot of the bytes: only a regular file, never wider mode
        original_sha = sha256_file(staged)
        meta = dict(meta) if meta is not None else {"generator": None}
        meta.pop("queue", None)
        meta.pop("validation", None)
        meta["original_sha256"] = original_sha
        _write_sidecar(staged, meta)
        if tokenizer is None:
            from model.loading import load_tokenizer

            tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)
        report, build = data.check_file(staged, cfg, gate_depth(cfg, depth), tokenizer=tokenizer, build_cache=True,
                                        label=str(src))
        meta.setdefault("spec", report.spec)
        _write_sidecar(staged, meta)
        partial = report.accepted and bool(report.rejected)
        queued_file, rejected = staged, staging / f"{staged.stem}.rejected.jsonl"
        if partial:
            queued_file = staging / "split" / staged.name
            queued_file.parent.mkdir()
            write_split(report, staged, queued_file, rejected)
            _write_sidecar(queued_file, meta)
        queued_sha = sha256_file(queued_file) if partial else original_sha
        refusal = None
        if report.accepted:
            data.commit_cache(cfg, build, tokenizer, queued_sha, str(src))
            # the packing plan and the masking verdict, once, here: the first chunk then starts like any later one
            masking = data.prepare(cfg, queued_file, tokenizer, queued_sha).masking
            if not masking.ok:
                refusal = f"{src}: the packed rows fail the masking checks; training would refuse them\n" \
                          f"{masking.format()}"
        elif build is not None:
            build.discard()
        build = None
        record(cfg, queued_file, report, queued_sha, {"verdict_key": data.verdict_key(cfg)})
        entry = queue.add(cfg, queued_file, priority, original_path=src)
        rejected_path = None
        if partial:
            failed = Path(cfg.root) / "failed"
            failed.mkdir(parents=True, exist_ok=True)
            rejected_path = failed / f"{entry.path.stem}.rejected.jsonl"
            os.replace(rejected, rejected_path)
        if not report.accepted or refusal:
            entry = queue.reject(cfg, entry.id, refusal or report.format(limit=50))
        return Admission(entry, report.accepted and not refusal, refusal or report.format(), len(report.rejected),
                         rejected_path)
    finally:
        if build is not None:
            build.discard()
        shutil.rmtree(staging, ignore_errors=True)   # our own staging copies, never user data


def _write_sidecar(data_file: Path, meta: dict) -> None:
    write_json(sidecar_path(data_file), meta)
