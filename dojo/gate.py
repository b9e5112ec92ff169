"""The gate in front of training: validate a file, record its lineage, and admit it to the queue or turn it
away — keeping every line either way.

``admit`` validates at the configured depth (``validation/validate.py``), writes the outcome into the file's
sidecar and the lineage statistics, then:

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
from dojo.lineage import read_sidecar, sidecar_path
from dojo.storage import sha256_file
from validation.validate import FileReport, validate_file, write_split


@dataclass(frozen=True)
class Admission:
    entry: queue.QueueEntry          # where the file went (queued or failed)
    accepted: bool
    report: str                      # the human-readable validation report
    rejected_lines: int
    rejected_path: Path | None       # failed/{stem}.rejected.jsonl when some lines were rejected


def record(cfg, data_file: Path, report: FileReport, sha256: str) -> dict:
    """Sidecar + lineage statistics for one validation; returns the validation dict."""
    from dojo.lineage import record_validation

    validation = {**report.to_dict(), "sha256": sha256}
    meta = record_validation(data_file, validation)
    lineage_stats.record(cfg, meta, validation)
    return validation


def admit(cfg, file: str | Path, priority: str = "normal", depth: str | None = None, tokenizer=None) -> Admission:
    src = Path(file)
    if not src.is_file():
        raise ValueError(f"{src}: no such file")
    queue.sanitize_name(src.name)          # refuse a bad name before doing any work
    report = validate_file(src, cfg, depth, tokenizer=tokenizer)
    staging = Path(cfg.root) / "state" / "staging" / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        staged = staging / src.name
        rejected = staging / f"{src.stem}.rejected.jsonl"
        partial = report.accepted and bool(report.rejected)
        if partial:
            write_split(report, src, staged, rejected)
        else:
            shutil.copyfile(src, staged)
        meta = read_sidecar(src)
        meta = dict(meta) if meta is not None else {"generator": None, "spec": report.spec}
        meta["original_sha256"] = sha256_file(src)
        meta.pop("queue", None)
        import json

        sidecar_path(staged).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        record(cfg, staged, report, meta["original_sha256"])
        entry = queue.add(cfg, staged, priority)
        rejected_path = None
        if partial:
            failed = Path(cfg.root) / "failed"
            failed.mkdir(parents=True, exist_ok=True)
            rejected_path = failed / f"{entry.path.stem}.rejected.jsonl"
            os.replace(rejected, rejected_path)
        if not report.accepted:
            entry = queue.reject(cfg, entry.id, report.format(limit=50))
        return Admission(entry, report.accepted, report.format(), len(report.rejected), rejected_path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)   # our own staging copies, never user data
