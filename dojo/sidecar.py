"""Sidecars: the ``.meta.json`` beside every data file, saying where the file came from.

The sidecar is the file's stem plus ``.meta.json``, as in the old system: ``train_bin_level1.jsonl`` pairs with
``train_bin_level1.meta.json``. It carries generator id@version, parameters, time, count, spec, skill and level.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path


def sidecar_path(data_file: str | Path) -> Path:
    p = Path(data_file)
    return p.with_name(p.stem + ".meta.json")


def write_sidecar(data_file: str | Path, generator_id: str, generator_version: str, params: dict,
                  count: int, spec: str = "chat_sft_v1", skill: str | None = None,
                  level: int | None = None) -> Path:
    """Write the sidecar of a freshly generated file (atomically)."""
    meta = {
        "generator_id": generator_id,
        "generator_version": generator_version,
        "generator": f"{generator_id}@{generator_version}",
        "params": params,
        "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "example_count": count,
        "spec": spec,
        "skill": skill,
        "level": level,
    }
    path = sidecar_path(data_file)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_sidecar(data_file: str | Path) -> dict | None:
    """The sidecar of ``data_file``, or None when there is none. A broken sidecar is an error, not ignored."""
    path = sidecar_path(data_file)
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: sidecar is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: sidecar must be a JSON object")
    return meta


def record_validation(data_file: str | Path, validation: dict) -> dict:
    """Add a validation outcome (``FileReport.to_dict()`` + ``sha256``) to the file's sidecar, creating a
    minimal sidecar when there is none. Returns the updated sidecar."""
    meta = read_sidecar(data_file) or {"generator": None, "spec": validation.get("spec")}
    meta["validation"] = validation
    path = sidecar_path(data_file)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return meta
