"""Writing a skill's generated examples as chat_sft_v1 JSONL with its sidecar (used by `dojo generate`, the
demo and the curriculum top-up)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from dojo.sidecar import write_sidecar
import skills


def generate_file(skill: str, level: int, count: int, seed: int, out: Path, force: bool = False) -> Path:
    """Write ``count`` chat_sft_v1 examples and their sidecar. Refuses to overwrite unless ``force``."""
    module = skills.get(skill)
    if level not in module.LEVELS:
        raise ValueError(f"--level {level}: {skill} has levels {list(module.LEVELS)}")
    if count < 1:
        raise ValueError(f"--count must be >= 1, got {count}")
    out = Path(out)
    if out.exists() and not force:
        raise ValueError(f"{out} already exists; pass --force to replace it (dojo never overwrites data silently)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for problem in module.generate(level, count, seed):
            f.write(json.dumps(module.to_chat(problem), ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    write_sidecar(out, module.GENERATOR_ID, module.GENERATOR_VERSION,
                  {"skill": skill, "level": level, "count": count, "seed": seed}, count,
                  spec="chat_sft_v1", skill=skill, level=level)
    return out
