"""Small helpers for building test inputs."""
import json
from pathlib import Path


def write_jsonl(path: Path, records) -> Path:
    """Write records (dicts, or raw strings written as-is) one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path


def chat(*turns, system=None):
    """chat(("user", "hi"), ("assistant", "yo")) -> a chat_sft_v1 record."""
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": r, "content": c} for r, c in turns]
    return {"messages": messages}
