"""Is a directory a usable model? Judged by its real structure, never by one file's presence.

A **full model**: ``config.json`` that parses and names a ``model_type``; safetensors weights (a single
``model.safetensors`` or an index whose every shard exists); a tokenizer (``tokenizer.json`` or
``tokenizer_config.json``). A **LoRA adapter**: ``adapter_config.json`` that parses, names a
``base_model_name_or_path`` and a ``peft_type``, plus ``adapter_model.safetensors``. Every safetensors file's
header must account for its size exactly, so a truncated or padded file is caught without loading it.

Pickle weights (``*.bin``, ``*.pt``, ``*.pth``, ``*.pkl``, ``*.ckpt``) without the safetensors a loader would
prefer are refused (``refuse_pickle_weights``) before any loader runs: unpickling runs code, and dojo reads and
writes safetensors only.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
MAX_SAFETENSORS_HEADER = 100 << 20     # the format's own limit on the JSON header


@dataclass(frozen=True)
class ModelDirCheck:
    path: str
    kind: str | None              # "full" | "lora" | None when invalid
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return self.kind is not None


def _json(path: Path) -> tuple[dict | None, str | None]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{path.name} is unreadable or not JSON ({exc})"
    if not isinstance(data, dict):
        return None, f"{path.name} is not a JSON object"
    return data, None


def pickle_weights(d: Path) -> list[str]:
    """Names of the pickle files in ``d`` when they are the weights a loader would read: no
    ``adapter_model.safetensors`` in an adapter directory, no ``model.safetensors`` (or index) otherwise."""
    d = Path(d)
    if (d / "adapter_config.json").exists():
        preferred = [d / "adapter_model.safetensors"]
    else:
        preferred = [d / "model.safetensors", d / "model.safetensors.index.json"]
    if any(p.is_file() for p in preferred):
        return []
    return sorted(p.name for p in d.iterdir() if p.suffix in PICKLE_SUFFIXES)


def pickle_message(d: Path, names: list[str]) -> str:
    return (f"{d} holds only pickle weights ({', '.join(names)}); dojo accepts safetensors only, because "
            f"unpickling runs code. Convert them once, where you trust their source: "
            f"AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(OUT) writes OUT/model.safetensors "
            f"(copy the tokenizer files too), then use OUT")


def refuse_pickle_weights(path: str | Path) -> None:
    """Raise ValueError (naming the directory and how to convert) when ``path`` is a directory whose weights are
    pickle only. Call before anything hands the directory to a loader."""
    d = Path(path)
    if d.is_dir():
        names = pickle_weights(d)
        if names:
            raise ValueError(pickle_message(d, names))


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file is unusable (unreadable, bad header, truncated or padded), or None. Reads the header
    only: 8 bytes of length, the JSON header, and the size the tensors' offsets imply."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if n < 2 or n > min(MAX_SAFETENSORS_HEADER, size - 8):
                return f"{path.name} is not a safetensors file (bad header length; truncated?)"
            header = json.loads(f.read(n).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"{path.name} has an unreadable safetensors header ({exc})"
    if not isinstance(header, dict):
        return f"{path.name} has a safetensors header that is not a JSON object"
    offsets = [t.get("data_offsets") if isinstance(t, dict) else None for k, t in header.items() if k != "__metadata__"]
    if not all(isinstance(o, list) and len(o) == 2 and all(type(x) is int for x in o) for o in offsets):
        return f"{path.name} has a safetensors header with bad data offsets"
    expected = 8 + n + max((o[1] for o in offsets), default=0)
    if size != expected:
        return f"{path.name} is {size} bytes but its header says {expected} (truncated or corrupted)"
    return None


def _full_model_problems(d: Path) -> list[str]:
    problems = []
    config, err = _json(d / "config.json")
    if err:
        problems.append(err)
    elif "model_type" not in config:
        problems.append("config.json names no model_type")
    index = d / "model.safetensors.index.json"
    if (d / "model.safetensors").is_file():
        if (d / "model.safetensors").stat().st_size == 0:
            problems.append("model.safetensors is empty")
        elif bad := safetensors_problem(d / "model.safetensors"):
            problems.append(bad)
    elif index.is_file():
        data, err = _json(index)
        if err:
            problems.append(err)
        else:
            weight_map = data.get("weight_map")
            shards = sorted(set(weight_map.values())) if isinstance(weight_map, dict) else []
            if not all(isinstance(s, str) and "/" not in s and s not in (".", "..") for s in shards):
                problems.append("model.safetensors.index.json names shards outside the directory")
                shards = []
            missing = [s for s in shards if not (d / s).is_file()]
            if not shards:
                problems.append("model.safetensors.index.json lists no shards")
            if missing:
                problems.append(f"missing weight shards: {', '.join(missing)}")
            problems += [bad for s in shards if s not in missing and (bad := safetensors_problem(d / s))]
    elif names := pickle_weights(d):
        problems.append(f"only pickle weights ({', '.join(names)}); dojo loads safetensors only")
    else:
        problems.append("no safetensors weights (model.safetensors or an index)")
    if not ((d / "tokenizer.json").is_file() or (d / "tokenizer_config.json").is_file()):
        problems.append("no tokenizer (tokenizer.json or tokenizer_config.json)")
    return problems


def _adapter_problems(d: Path) -> list[str]:
    problems = []
    config, err = _json(d / "adapter_config.json")
    if err:
        problems.append(err)
    else:
        for key in ("base_model_name_or_path", "peft_type"):
            if not config.get(key):
                problems.append(f"adapter_config.json names no {key}")
    weights = d / "adapter_model.safetensors"
    if not weights.is_file() or weights.stat().st_size == 0:
        if names := pickle_weights(d):
            problems.append(f"only pickle adapter weights ({', '.join(names)}); dojo loads safetensors only")
        else:
            problems.append("no adapter weights (adapter_model.safetensors)")
    elif bad := safetensors_problem(weights):
        problems.append(bad)
    return problems


def check_model_dir(path: str | Path) -> ModelDirCheck:
    """Classify ``path`` as a full model, a LoRA adapter, or invalid (with every problem found)."""
    d = Path(path)
    if not d.is_dir():
        return ModelDirCheck(str(d), None, (f"{d} is not a directory",))
    if (d / "adapter_config.json").exists():
        problems = _adapter_problems(d)
        return ModelDirCheck(str(d), None if problems else "lora", tuple(problems))
    problems = _full_model_problems(d)
    return ModelDirCheck(str(d), None if problems else "full", tuple(problems))
