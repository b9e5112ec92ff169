"""Sidecars: the ``.meta.json`` beside every data file, saying where the file came from.

The sidecar is the file's stem plus ``.meta.json``, as in the old system: ``train_bin_level1.jsonl`` pairs with
``train_bin_level1.meta.json``. It carries generator id@version, parameters, time, count, spec, skill and level.

A sidecar is user input (people write their own, or copy one in by hand), so ``read_sidecar`` checks it at the
door: read through ``storage.read_json`` (a regular file, at most ``MAX_BYTES``, at most ``MAX_DEPTH`` levels
deep, a JSON object), then the type of every field dojo reads. A wrong type is a ValueError naming the sidecar,
the field and the value, so one bad value never reaches the shared state (queue, lineage statistics). Fields
dojo does not know are kept as they are: users may add their own.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from dojo.storage import read_json, write_json

MAX_BYTES = 1 << 20     # a sidecar is a few hundred bytes; 1 MiB leaves room for big params and long histories
MAX_DEPTH = 32          # the deepest sidecar dojo writes is 4 levels (queue.history[i].reason)
SHOW = 200              # characters of a bad value shown in an error


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
    write_json(path, meta)
    return path


# ---------------------------------------------------------------- field checks
def _show(value) -> str:
    """``repr`` of a bad value (control characters escaped by repr itself), cut to SHOW characters."""
    text = repr(value)
    return text if len(text) <= SHOW else text[: SHOW - 1] + "…"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_iso_time(value) -> bool:
    if not isinstance(value, str) or len(value) > 64:
        return False
    try:
        dt.datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


# field -> (check, what it must be). None means "not given" for every field but the blocks dojo writes.
_STR = (lambda v: v is None or isinstance(v, str), "a string or null")
FIELDS = {
    "generator": _STR,
    "generator_id": _STR,
    "generator_version": _STR,
    "spec": _STR,
    "skill": _STR,
    "original_sha256": _STR,
    "level": (lambda v: v is None or _is_int(v), "an integer or null"),
    "generated_at": (lambda v: v is None or _is_iso_time(v), "an ISO-8601 time such as '2025-01-31T12:00:00+00:00'"),
    "example_count": (lambda v: v is None or (_is_int(v) and v >= 0), "an integer >= 0"),
    "params": (lambda v: v is None or isinstance(v, dict), "a JSON object"),
    "queue": (lambda v: isinstance(v, dict), "a JSON object (dojo writes it; remove it to start afresh)"),
    "validation": (lambda v: isinstance(v, dict), "a JSON object (dojo writes it; remove it to start afresh)"),
}
# inside the queue block, which the queue reads back on every move
QUEUE_FIELDS = {
    "id": _STR, "sha256": _STR, "priority": _STR, "added_at": _STR, "original_path": _STR, "state": _STR,
    "size_bytes": (lambda v: v is None or (_is_int(v) and v >= 0), "an integer >= 0"),
    "examples": (lambda v: v is None or (_is_int(v) and v >= 0), "an integer >= 0"),
    "history": (lambda v: isinstance(v, list) and all(isinstance(h, dict) for h in v), "a list of JSON objects"),
}


def check_sidecar(meta: dict, path: Path) -> dict:
    """``meta`` when every known field has its type; else ValueError naming ``path``, the field and the value."""
    for fields, prefix, block in ((FIELDS, "", meta), (QUEUE_FIELDS, "queue.", meta.get("queue") or {})):
        for name, (ok, what) in fields.items():
            if name in block and not ok(block[name]):
                raise ValueError(f"{path}: sidecar field {prefix}{name} must be {what}, not {_show(block[name])}; "
                                 f"fix the sidecar (or remove the field)")
    return meta


def read_sidecar(data_file: str | Path) -> dict | None:
    """The sidecar of ``data_file``, or None when there is none. A broken sidecar (not a regular file, too big,
    too deep, not a JSON object, a known field of the wrong type) is a ValueError naming it, never ignored."""
    path = sidecar_path(data_file)
    meta = read_json(path, expect=dict, what="sidecar", max_bytes=MAX_BYTES, max_depth=MAX_DEPTH)
    return None if meta is None else check_sidecar(meta, path)


def record_validation(data_file: str | Path, validation: dict) -> dict:
    """Add a validation outcome (``FileReport.to_dict()`` + ``sha256``) to the file's sidecar, creating a
    minimal sidecar when there is none. Returns the updated sidecar."""
    meta = read_sidecar(data_file) or {"generator": None, "spec": validation.get("spec")}
    meta["validation"] = validation
    write_json(sidecar_path(data_file), meta)
    return meta
