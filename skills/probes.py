"""Transfer probes: a fixed, seeded set of small general tasks (the old system's "primitives") that say whether
training on the curriculum skills helps, or hurts, what the model could do besides.

Twelve tasks (copy, reverse, count a letter, compare two numbers, sort, first item, last item, uppercase,
length, add, next letter, repeat), ``PER_TASK`` problems each, drawn from ``PROBE_SEED`` with a private RNG: the
set is the same on every call and every machine. ``score`` is exact: the first non-empty line of the output
(think blocks and emoji stripped as for every skill), surrounding whitespace dropped, must equal the answer —
case and separators included; never a substring test. ``summary`` turns per-problem verdicts into a score per
task and overall. ``model.evaluate.run_probes`` runs them through the evaluation's generation path.

No torch, no Prefect.
"""
from __future__ import annotations

import random
import string
from dataclasses import dataclass

from skills.bin import strip_reasoning

PROBES_VERSION = "1.0.0"
PROBE_SEED = 20261202
PER_TASK = 5
WORDS = ("apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "grape", "candle", "forest", "yellow",
         "window", "garden", "rocket", "silver", "banana", "planet", "orange", "marble", "pencil", "button",
         "dragon", "winter", "summer", "castle", "copper", "jungle", "meadow", "puzzle", "harbor")
COLORS = ("red", "blue", "green", "black", "white", "pink", "brown", "gray", "gold", "teal")


@dataclass(frozen=True)
class Probe:
    task: str
    prompt: str
    answer: str


def _copy(rng):
    w = rng.choice(WORDS)
    return f"Copy this word exactly: {w}", w


def _reverse(rng):
    w = rng.choice(WORDS)
    return f"Write this word backwards: {w}", w[::-1]


def _count(rng):
    w = rng.choice(WORDS)
    c = rng.choice(sorted(set(w)))
    return f"How many times does the letter {c} appear in {w}? Answer with a number.", str(w.count(c))


def _compare(rng):
    a, b = rng.sample(range(1, 100), 2)
    return f"Which number is larger, {a} or {b}? Answer with the number.", str(max(a, b))


def _sort(rng):
    xs = rng.sample(range(1, 50), 4)
    return (f"Sort these numbers from smallest to largest, comma-separated: {', '.join(map(str, xs))}",
            ", ".join(map(str, sorted(xs))))


def _first(rng):
    xs = rng.sample(COLORS, 4)
    return f"What is the first item of this list: {', '.join(xs)}?", xs[0]


def _last(rng):
    xs = rng.sample(COLORS, 4)
    return f"What is the last item of this list: {', '.join(xs)}?", xs[-1]


def _uppercase(rng):
    w = rng.choice(WORDS)
    return f"Write this word in capital letters: {w}", w.upper()


def _length(rng):
    w = rng.choice(WORDS)
    return f"How many letters does the word {w} have? Answer with a number.", str(len(w))


def _add(rng):
    a, b = rng.randint(1, 50), rng.randint(1, 50)
    return f"What is {a} + {b}? Answer with the number.", str(a + b)


def _next_letter(rng):
    c = rng.choice(string.ascii_lowercase[:-1])
    return f"Which letter comes right after {c} in the alphabet?", chr(ord(c) + 1)


def _repeat(rng):
    w, n = rng.choice(COLORS), rng.randint(2, 4)
    return f"Write the word {w} {n} times, separated by single spaces.", " ".join([w] * n)


TASKS = {"copy": _copy, "reverse": _reverse, "count": _count, "compare": _compare, "sort": _sort,
         "first": _first, "last": _last, "uppercase": _uppercase, "length": _length, "add": _add,
         "next_letter": _next_letter, "repeat": _repeat}


def problems(per_task: int = PER_TASK, seed: int = PROBE_SEED) -> list[Probe]:
    """``per_task`` probes of every task, deterministic in (version, task, seed)."""
    out = []
    for task, make in TASKS.items():
        rng = random.Random(f"probes:{PROBES_VERSION}:{task}:{seed}")
        out.extend(Probe(task, *make(rng)) for _ in range(per_task))
    return out


def score(output: str, probe: Probe) -> bool:
    """Exact: the first non-empty line (reasoning stripped), outer whitespace dropped, equals the answer."""
    line = next((ln for ln in strip_reasoning(output).splitlines() if ln.strip()), "")
    return line.strip() == probe.answer


def summary(probes: list[Probe], outputs: list[str]) -> dict:
    """{score: overall share correct, by_task: {task: share}, n, version} for outputs in probe order."""
    if len(probes) != len(outputs):
        raise ValueError(f"{len(outputs)} outputs for {len(probes)} probes")
    by_task: dict[str, list[bool]] = {}
    for probe, output in zip(probes, outputs):
        by_task.setdefault(probe.task, []).append(score(output, probe))
    correct = sum(sum(v) for v in by_task.values())
    return {"score": correct / max(1, len(probes)), "n": len(probes), "version": PROBES_VERSION,
            "by_task": {t: sum(v) / len(v) for t, v in by_task.items()}}
