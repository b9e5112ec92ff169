"""Evaluation: batched greedy generation on a skill's fixed eval sets, scored by the skill's scorer.

    dojo eval CHECKPOINT --skill bin [--levels 1,2]

Writes ``eval/{checkpoint}.json`` under the storage root (one report per checkpoint, skills merged) and adds
accuracy per skill and level to the checkpoint's ledger. The prompt is rendered exactly as in training: the
checkpoint's recorded system prompt, the model's chat template, and a no-thinking generation prompt. Where a
level's eval set is the whole problem space (BIN level 1) the report says it overlaps training data, so
memorisation is never mistaken for generalisation.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LogitsProcessorList

from dojo.config import Config
from model import checkpoint as ckpt
from model.chat import generation_prompt, with_system_prompt
from model.profiles import trained_with
from model.loading import cpu_threads, load_model, load_tokenizer, pick_runtime
import skills

log = logging.getLogger("dojo.eval")


def resolve_checkpoint(cfg: Config, name_or_path: str) -> Path:
    """A checkpoint given as a path, a name under ``checkpoints/``, or ``latest``, verified before anything loads
    it. ``latest`` is the newest valid checkpoint (invalid newer ones are quarantined, see
    ``model.checkpoint.latest_checkpoint``). A named one is refused with every problem found: a dojo checkpoint
    (ledger, manifest or canonical name) must pass ``verify_checkpoint``, any other directory must be a usable
    model directory (safetensors only)."""
    from validation.model_dir import check_model_dir, refuse_pickle_weights

    if name_or_path == "latest":
        found = ckpt.latest(cfg)
        if found is None:
            raise ValueError(f"no valid checkpoints under {cfg.root / 'checkpoints'} yet")
        return found
    path = Path(name_or_path)
    if cfg.remote and not path.exists() and ckpt.parse_name(name_or_path) is not None:
        from dojo import mirror

        mirror.fetch_checkpoint(cfg, name_or_path)     # committed on the store → verified local copy
    if not path.exists() and (cfg.root / "checkpoints" / name_or_path).exists():
        path = cfg.root / "checkpoints" / name_or_path
    if not path.is_dir():
        raise ValueError(f"checkpoint {name_or_path} not found (as a path or under {cfg.root / 'checkpoints'})")
    refuse_pickle_weights(path)
    problems = ckpt.verify_checkpoint(path) if ckpt.looks_like_checkpoint(path) else check_model_dir(path).problems
    if problems:
        raise ValueError(f"{path} cannot be used: {'; '.join(problems)}")
    return path


@torch.no_grad()
def greedy_generate(model, tokenizer, prompts: list[str], batch_size: int, max_new_tokens: int,
                    logits_processor=None) -> list[str]:
    """Greedy completions for rendered prompts, batched with left padding. Returns decoded new text."""
    tokenizer.padding_side = "left"
    stop = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id]
    device = next(model.parameters()).device
    model.eval()
    outputs = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(device) for k, v in enc.items()}
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop,
                             pad_token_id=tokenizer.pad_token_id, logits_processor=logits_processor)
        new = out[:, enc["input_ids"].shape[1]:]                 # (B, new tokens)
        outputs.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    return outputs


def eval_set_note(skill, level: int) -> str:
    if skill.covers_space(level):
        return (f"the whole problem space ({skill.problem_space_size(level)} problems); it overlaps training "
                f"data, so this measures memorisation as much as skill")
    return f"{len(skill.eval_problems(level))} fixed problems held out from all training data"


@dataclass
class Generator:
    """A model loaded for greedy answers, rendered exactly as in training: the checkpoint's recorded system prompt
    and profile (or the config's for a base model), the chat template and a no-thinking generation prompt. Used
    by the evaluation and the transfer probes, so both see the same generation path."""
    model: object
    tokenizer: object
    profile: object
    system_prompt: str
    batch_size: int

    @classmethod
    def load(cls, cfg: Config, path: str | Path, ledger: dict | None = None) -> "Generator":
        ledger = ledger or {}
        profile, system_prompt = trained_with(ledger, "none" if ledger else cfg.data.profile, cfg.data.system_prompt)
        runtime = pick_runtime(cfg.model.dtype, cfg.model.attn_implementation)   # no Liger: generation only
        cpu_threads(cfg, runtime, evaluating=True)
        tokenizer = load_tokenizer(path, cfg.model.trust_remote_code)
        model = load_model(path, runtime, cfg.model.trust_remote_code, trainable=False, merge_adapter=True)
        return cls(model, tokenizer, profile, system_prompt, cfg.eval.batch_size)

    def answer(self, messages: list[list[dict]], max_new_tokens: int) -> list[str]:
        """Greedy completions of each conversation (its user turn(s), no system prompt), the profile's answer
        text not yet extracted."""
        prompts = [generation_prompt(with_system_prompt(m, self.system_prompt), self.tokenizer) for m in messages]
        processors = LogitsProcessorList(self.profile.logit_processors(self.tokenizer))
        return greedy_generate(self.model, self.tokenizer, prompts, self.batch_size, max_new_tokens,
                               processors or None)

    def attempt(self, skill, problems: list, max_new_tokens: int) -> tuple[list[str], list[str], list]:
        """Each problem asked as the evaluation asks it (its user turn): the raw outputs, the profile's answer
        texts and the skill's scores of those. Evaluation, sparring and the BIN generalisation probe share it."""
        outputs = self.answer([skill.to_chat(p)["messages"][:1] for p in problems], max_new_tokens)
        answers = [self.profile.answer_text(o) for o in outputs]
        return outputs, answers, [skill.score(a, p) for a, p in zip(answers, problems)]


PROBE_MAX_NEW_TOKENS = 32       # every probe answer is a few tokens


def run_probes(cfg: Config, path: str | Path, ledger: dict | None = None) -> dict:
    """Score the transfer probes (``skills.probes``) for a model directory, a checkpoint or a hub id, through the
    evaluation's generation path. Returns ``skills.probes.summary`` plus the seconds taken."""
    from skills import probes

    started = time.monotonic()
    gen = Generator.load(cfg, path, ledger)
    items = probes.problems()
    outputs = gen.answer([[{"role": "user", "content": p.prompt}] for p in items],
                         min(cfg.eval.max_new_tokens, PROBE_MAX_NEW_TOKENS))
    result = probes.summary(items, [gen.profile.answer_text(o) for o in outputs])
    result["seconds"] = round(time.monotonic() - started, 2)
    return result


def evaluate(cfg: Config, checkpoint: str | Path, skill_name: str = "bin", levels: list[int] | None = None) -> dict:
    """Score ``checkpoint`` on the eval sets of ``levels``; write the report and the ledger. Returns the report."""
    skill = skills.get(skill_name)
    path = resolve_checkpoint(cfg, str(checkpoint))
    ledger = ckpt.read_ledger(path) if (path / ckpt.LEDGER).exists() else {}
    if levels is None:
        top = ledger.get("level") if ledger.get("skill") == skill_name else None
        levels = list(range(1, (top or 1) + 1))
    bad = [lv for lv in levels if lv not in skill.LEVELS]
    if bad:
        raise ValueError(f"--levels: {bad} not in {skill_name}'s levels {list(skill.LEVELS)}")
    gen = Generator.load(cfg, path, ledger)
    started = time.monotonic()
    results = {}
    for level in levels:
        problems = skill.eval_problems(level)
        outputs, _, scores = gen.attempt(skill, problems, cfg.eval.max_new_tokens)
        correct = sum(s.correct for s in scores)
        failures = [{"prompt": p.prompt, "expected": p.completion, "output": o, "reason": s.reason}
                    for p, o, s in zip(problems, outputs, scores) if not s.correct][: cfg.eval.show_failures]
        results[str(level)] = {
            "accuracy": correct / len(problems), "partial": sum(s.partial for s in scores) / len(problems),
            "correct": correct, "n": len(problems), "overlaps_training": skill.covers_space(level),
            "eval_set": eval_set_note(skill, level), "failures": failures,
        }
        log.info("%s level %d: %.3f (%d/%d)", skill_name, level, correct / len(problems), correct, len(problems))
    report_path = cfg.root / "eval" / f"{path.name}.json"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.exists() else {}
    report.update({"checkpoint": path.name, "path": str(path.resolve()), "step": ledger.get("step"),
                   "system_prompt": gen.system_prompt,
                   "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
    report.setdefault("skills", {})[skill_name] = {
        "generator": f"{skill.GENERATOR_ID}@{skill.GENERATOR_VERSION}",
        "seconds": round(time.monotonic() - started, 2),
        "levels": {**report.get("skills", {}).get(skill_name, {}).get("levels", {}), **results},
    }
    ckpt.write_json_atomic(report_path, report)
    from dojo import mirror

    mirror.push_file(cfg, f"eval/{path.name}.json")
    if ledger:
        accuracies = dict(ledger.get("eval", {}))
        accuracies[skill_name] = {**accuracies.get(skill_name, {}),
                                  **{lv: r["accuracy"] for lv, r in results.items()}}
        ckpt.update_ledger(path, eval=accuracies)
        if cfg.remote and path.parent == cfg.root / "checkpoints":
            mirror.push_file(cfg, f"checkpoints/{path.name}/{ckpt.LEDGER}")
    report["report_path"] = str(report_path)
    return report
