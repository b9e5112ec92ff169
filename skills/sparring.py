"""Sparring examples: a checkpoint's wrong answers turned into its next lesson (SPEC "Curriculum, promotion,
sparring"). Pure and skill-agnostic: it works on any skill module in ``skills.SKILLS`` (a ``Problem`` has
``prompt``, ``completion`` and ``key``). The model run and the queueing live in ``dojo/spar.py``.

For every problem the checkpoint got wrong, exactly three chat_sft_v1 examples (``examples_for_miss``):

1. the problem and the model's answer + "Is this answer correct?"   -> "It is incorrect."
2. the same problem and answer + "Find the correct solution."       -> the golden answer (the skill's completion)
3. a FRESH problem (never one of the asked ones) and its golden answer + "Is this answer correct?"
                                                                   -> "It is correct."

The user turn is laid out by ``review_prompt`` (docs/data-formats.md, "Sparring examples")::

    {the skill's prompt}

    Proposed answer:
    {the answer under review}

    {the question}

Problems (``draw_problems``) are seeded from the checkpoint (``seed_for``: its name and step), distinct by key,
and never a held-out eval problem of any level. Where a level's eval set IS its whole space (``covers_space``: BIN
level 1, 187 problems) no problem can avoid it: that level's sparring problems come from the same space, as its
curriculum files already do, and its eval report already says it overlaps training. At most half of an
enumerable space is asked, so every wrong answer gets its own fresh confirmation problem.

No torch, no prefect.
"""
from __future__ import annotations

import hashlib

GENERATOR_ID = "spar"
GENERATOR_VERSION = "1.0.0"
ASK_CHECK = "Is this answer correct?"
ASK_SOLVE = "Find the correct solution."
SAY_WRONG = "It is incorrect."
SAY_RIGHT = "It is correct."
EMPTY_ANSWER = "(no answer)"        # what an empty model output is shown as under review
MAX_ROUNDS = 1000                   # generator rounds before draw_problems gives up (never reached in practice)


def seed_for(checkpoint_name: str, step: int) -> int:
    """The sparring seed of a checkpoint: a stable 32-bit number from its name and step (the same checkpoint is
    always asked the same problems; the next one gets others)."""
    digest = hashlib.sha256(f"{GENERATOR_ID}:{checkpoint_name}:{step}".encode()).hexdigest()
    return int(digest[:8], 16)


def review_prompt(problem_prompt: str, answer: str, question: str) -> str:
    """The user turn of a review example: the problem, the answer under review, the question."""
    return f"{problem_prompt}\n\nProposed answer:\n{answer.strip() or EMPTY_ANSWER}\n\n{question}"


def _chat(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def examples_for_miss(problem, model_answer: str, fresh) -> list[dict]:
    """The three chat_sft_v1 records for one wrong answer (module docstring). ``fresh`` is another problem of the
    same level that was not asked."""
    if fresh.key == problem.key:
        raise ValueError(f"the confirmation problem must be a fresh one, not the missed problem {problem.key}")
    return [
        _chat(review_prompt(problem.prompt, model_answer, ASK_CHECK), SAY_WRONG),
        _chat(review_prompt(problem.prompt, model_answer, ASK_SOLVE), problem.completion),
        _chat(review_prompt(fresh.prompt, fresh.completion, ASK_CHECK), SAY_RIGHT),
    ]


def asked_count(skill, level: int, wanted: int) -> int:
    """How many problems are asked: ``wanted``, but at most half an enumerable level's space (so as many fresh
    problems remain for the confirmations)."""
    if wanted < 1:
        raise ValueError(f"problems must be >= 1, got {wanted}")
    size = skill.problem_space_size(level)
    return wanted if size is None else max(1, min(wanted, size // 2))


def draw_problems(skill, level: int, wanted: int, seed: int) -> tuple[list, list]:
    """(asked, fresh): ``asked_count`` problems to ask and as many fresh ones for the confirmations, all distinct
    by key, deterministic in (skill, level, wanted, seed). Neither list holds a held-out eval problem of any
    level (``skill.held_out_keys``); a level whose eval set covers its whole space has none of its own."""
    n = asked_count(skill, level, wanted)
    held_out = skill.held_out_keys(level)
    seen: set[str] = set()
    out: list = []
    for round_ in range(MAX_ROUNDS):
        for p in skill.generate(level, 2 * n + 16, seed * MAX_ROUNDS + round_):
            if p.key not in seen and p.key not in held_out:
                seen.add(p.key)
                out.append(p)
        if len(out) >= 2 * n:
            return out[:n], out[n:2 * n]
    raise AssertionError(f"{skill.GENERATOR_ID} level {level}: only {len(out)} distinct problems in {MAX_ROUNDS} "
                         f"rounds, {2 * n} needed")


def build(asked: list, outputs: list[str], correct: list[bool], fresh: list) -> list[dict]:
    """Every sparring record for one round: three per wrong answer, in the order asked; the i-th miss is
    confirmed with ``fresh[i]``."""
    misses = [(p, o) for p, o, ok in zip(asked, outputs, correct) if not ok]
    if len(fresh) < len(misses):
        raise ValueError(f"{len(misses)} wrong answers need as many fresh problems, got {len(fresh)}")
    return [record for (p, o), f in zip(misses, fresh) for record in examples_for_miss(p, o, f)]
