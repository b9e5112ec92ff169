"""Writing a skill's generated examples as chat_sft_v1 JSONL with its sidecar (used by `dojo generate`, the
demo and the curriculum top-up)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from dojo.sidecar import write_sidecar
import skills


def generate_file(skill: str, level: int, count: int, seed: int, out: Path, force: bool = False,
                  replay_levels: tuple[int, ...] = (), replay_share: float = 0.0,
                  mixed: list[dict] | None = None, mixed_from: list[dict] | None = None) -> Path:
    """Write ``count`` chat_sft_v1 examples and their sidecar. Refuses to overwrite unless ``force``.

    ``replay_share`` of the examples (rounded) are drawn from ``replay_levels`` (mastered levels, against
    forgetting), spread evenly over them and shuffled in with a seeded RNG; the sidecar's params record the
    share, the levels and the count per level. ``mixed``: ready chat_sft_v1 records (sparring examples) that
    take the place of as many generated ones, shuffled in the same way; ``mixed_from`` is their lineage (the
    files they came from), recorded in params as ``spar_mixed`` with ``spar_count``."""
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
    bad = [lv for lv in replay_levels if lv not in module.LEVELS or lv == level]
    if bad or not 0.0 <= replay_share <= 1.0:
        raise ValueError(f"replay: levels {list(replay_levels)} (other levels of {skill}) and a share in [0, 1] "
                         f"(got {replay_share}) are needed")
    mixed = list(mixed or [])
    if len(mixed) >= count:
        raise ValueError(f"{len(mixed)} mixed-in examples leave no room in a file of {count}")
    n_replay = round((count - len(mixed)) * replay_share) if replay_levels else 0
    per_level = {lv: n_replay // len(replay_levels) + (i < n_replay % len(replay_levels))
                 for i, lv in enumerate(replay_levels)} if n_replay else {}
    problems = module.generate(level, count - len(mixed) - n_replay, seed)
    for lv, n in per_level.items():
        problems += module.generate(lv, n, seed)
    records = [module.to_chat(problem) for problem in problems] + mixed
    if n_replay or mixed:
        import random

        random.Random(f"replay:{skill}:{level}:{seed}").shuffle(records)
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    params = {"skill": skill, "level": level, "count": count, "seed": seed}
    if replay_levels:
        params.update(replay_share=replay_share, replay_levels=list(replay_levels),
                      replay_count={str(lv): n for lv, n in per_level.items()})
    if mixed:
        params.update(spar_count=len(mixed), spar_mixed=list(mixed_from or []))
    write_sidecar(out, module.GENERATOR_ID, module.GENERATOR_VERSION, params, count,
                  spec="chat_sft_v1", skill=skill, level=level)
    return out
