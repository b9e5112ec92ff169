"""Skills: generators, scorers and fixed eval sets. Never imports prefect or torch.

``SKILLS`` is the one registry of skills: name -> module with LEVELS, GENERATOR_ID/VERSION, generate,
to_chat, eval_problems, eval_keys, held_out_keys (what no generator may emit), covers_space, problem_space_size
and score. The curriculum, the config check, the generator and the evaluator all look skills up here; add a skill
by adding it to this dict.
"""
from skills import bin as bin_skill
from skills import syllo as syllo_skill

SKILLS = {"bin": bin_skill, "syllo": syllo_skill}


def get(name: str):
    """The module of skill ``name``; ValueError naming the known skills when there is none."""
    if name not in SKILLS:
        raise ValueError(f"unknown skill {name!r}; known: {', '.join(SKILLS)}")
    return SKILLS[name]
