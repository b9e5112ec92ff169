"""Checkpoints and their ledger.

A checkpoint is ``checkpoints/checkpoint-{step}-{YYYYMMDD}-{HHMM}/`` (UTC) under the storage root: an HF model
directory (safetensors only) + ``.ledger.json`` + ``training_state/`` (optimizer, scheduler, RNG and data
position, for exact resume). It is written under ``.tmp-…`` and renamed when complete, so a crash never
leaves a directory that looks finished. The ledger says what made it: step, time, losses, learning rate,
data files with hashes, skill and level, examples trained, size, whether optimizer state is inside, the
resolved config, the system prompt and the code version. Evaluation adds its accuracies to the ledger.

Optimizer and RNG state are stored as safetensors (tensors) + JSON (everything else): no pickle anywhere.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dojo.storage import sha256_file  # noqa: F401 - part of this module's API (ledger hashes)
from validation.model_dir import check_model_dir

NAME_RE = re.compile(r"^checkpoint-(\d+)-(\d{8})-(\d{4})$")
LEDGER = ".ledger.json"
STATE_DIR = "training_state"
LEDGER_VERSION = 1


def canonical_name(step: int, when: dt.datetime) -> str:
    return f"checkpoint-{step}-{when.astimezone(dt.timezone.utc):%Y%m%d-%H%M}"


def parse_name(name: str) -> int | None:
    """The step of a canonical checkpoint name, or None for anything else (temp dirs included)."""
    m = NAME_RE.match(name)
    return int(m.group(1)) if m else None


def list_checkpoints(root: Path) -> list[Path]:
    """Complete, valid checkpoints under ``root/checkpoints``, oldest step first."""
    folder = Path(root) / "checkpoints"
    if not folder.is_dir():
        return []
    found = []
    for d in folder.iterdir():
        step = parse_name(d.name)
        if step is not None and (d / LEDGER).is_file() and check_model_dir(d).ok:
            found.append((step, d.name, d))
    return [d for _, _, d in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def code_version() -> dict:
    """Package version and, when running from a git checkout, the commit and whether it was dirty."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("dojo")
    except PackageNotFoundError:
        package = None
    repo = Path(__file__).resolve().parent.parent
    commit = dirty = None
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        if commit:
            dirty = bool(subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                        capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"package": package, "git_commit": commit, "git_dirty": dirty}


# ---------------------------------------------------------------- ledger
def read_ledger(checkpoint: Path) -> dict:
    return json.loads((Path(checkpoint) / LEDGER).read_text(encoding="utf-8"))


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def update_ledger(checkpoint: Path, **fields) -> dict:
    """Merge ``fields`` into a checkpoint's ledger (atomic replace)."""
    ledger = read_ledger(checkpoint)
    ledger.update(fields)
    write_json_atomic(Path(checkpoint) / LEDGER, ledger)
    return ledger


# ---------------------------------------------------------------- optimizer / RNG state without pickle
def _split_state(obj, prefix: str, tensors: dict) -> object:
    """Replace every tensor in a nested dict/list with a reference, collecting tensors by key."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _split_state(v, f"{prefix}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__" if isinstance(obj, list) else "__tuple__":
                [_split_state(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]}
    assert obj is None or isinstance(obj, (int, float, str, bool)), f"cannot store {type(obj)} at {prefix}"
    return obj


def _join_state(obj, tensors: dict):
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: _join_state(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            return [_join_state(v, tensors) for v in obj["__list__"]]
        if "__tuple__" in obj:
            return tuple(_join_state(v, tensors) for v in obj["__tuple__"])
    return obj


def save_state(folder: Path, name: str, state) -> None:
    """Store a nested state (dicts, lists, tensors, scalars) as ``name.safetensors`` + ``name.json``."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _split_state(state, name, tensors)
    if tensors:
        save_file(tensors, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps(skeleton), encoding="utf-8")


def load_state(folder: Path, name: str):
    skeleton = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
    tensor_file = folder / f"{name}.safetensors"
    tensors = load_file(str(tensor_file)) if tensor_file.exists() else {}
    return _join_state(skeleton, tensors)


# ---------------------------------------------------------------- writing
def save_checkpoint(root: Path, step: int, model, tokenizer, ledger: dict, training_state: dict | None,
                    now: dt.datetime | None = None) -> Path:
    """Write a complete checkpoint under a temporary name, then rename it into place. Returns its path.

    ``training_state`` maps a name (``optimizer``, ``scheduler``, ``rng``, ``trainer``) to a nested state; None
    stores weights only. Refuses to overwrite an existing checkpoint.
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    name = canonical_name(step, now)
    folder = Path(root) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / name
    if final.exists():
        raise FileExistsError(f"checkpoint {final} already exists; refusing to overwrite it")
    tmp = folder / f".tmp-{name}-{os.getpid()}"
    tmp.mkdir()
    try:
        model.save_pretrained(tmp)   # safetensors is the only format transformers 5 writes
        tokenizer.save_pretrained(tmp)
        if training_state is not None:
            (tmp / STATE_DIR).mkdir()
            for key, value in training_state.items():
                save_state(tmp / STATE_DIR, key, value)
        ledger = dict(ledger, ledger_version=LEDGER_VERSION, name=name, step=step,
                      time=now.astimezone(dt.timezone.utc).isoformat(timespec="seconds"),
                      has_optimizer_state=training_state is not None)
        ledger["size_bytes"] = dir_size(tmp)
        write_json_atomic(tmp / LEDGER, ledger)
        problems = check_model_dir(tmp).problems
        assert not problems, f"freshly written checkpoint is not a valid model dir: {problems}"
        os.rename(tmp, final)
    except BaseException:            # cancelled or failed mid-save: leave no half-written directory behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def has_training_state(checkpoint: Path) -> bool:
    return (Path(checkpoint) / STATE_DIR / "trainer.json").is_file()
