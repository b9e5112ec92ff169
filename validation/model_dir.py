"""Is a directory a usable model? Judged by its real structure, never by one file's presence.

A **full model**: ``config.json`` that parses and names a ``model_type``; safetensors weights (a single
``model.safetensors`` or an index whose every shard exists); a tokenizer (``tokenizer.json`` or
``tokenizer_config.json``). A **LoRA adapter**: ``adapter_config.json`` that parses, names a
``base_model_name_or_path`` and a ``peft_type``, plus ``adapter_model.safetensors``. Pickle weights
(``*.bin``) are refused: dojo reads and writes safetensors only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


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
    elif index.is_file():
        data, err = _json(index)
        if err:
            problems.append(err)
        else:
            shards = sorted(set((data.get("weight_map") or {}).values()))
            missing = [s for s in shards if not (d / s).is_file()]
            if not shards:
                problems.append("model.safetensors.index.json lists no shards")
            if missing:
                problems.append(f"missing weight shards: {', '.join(missing)}")
    elif list(d.glob("*.bin")):
        problems.append("only pickle (*.bin) weights; dojo loads safetensors only")
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
        problems.append("no adapter weights (adapter_model.safetensors)")
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
