"""Sparring: the model's own mistakes become its next lesson, unattended (docs/sparring.md).

    dojo spar CHECKPOINT [--skill S] [--level L] [--problems N]

``spar`` asks a checkpoint N fresh problems at its skill's training level — greedy, through evaluation's own
generation path (``model.evaluate.Generator``: the checkpoint's system prompt, chat template and profile logit
processors) and scored by the skill's scorer — and turns every wrong answer into the three examples of
``skills/sparring.py``. The chat_sft_v1 file (sidecar: generator ``spar@<version>``, checkpoint, step, skill,
level, seed, problems asked and missed) enters the queue at HIGH priority through the gate, the path
``dojo queue add`` takes. No wrong answer, no file.

The guards the training loop applies when it claims (``dojo/steps.py``):

* stale (``staleness``): a sparring file is tied to its checkpoint. When the newest checkpoint is more than
  ``spar.max_age_steps`` steps past it, or its level is no longer the skill's training level, it is retired to
  done/ with the reason, not trained.
* flooding (``over_cap``): sparring stays below ``spar.max_share`` of the examples trained over the last
  ``spar.share_window`` chunks (``state/stream.json``, one record per trained chunk). A sparring file is claimed
  only when one more chunk of it (the window's mean size) keeps the share at or below the cap; otherwise it waits
  in the queue and the curriculum is trained.

No prefect here (``tasks/spar.py`` and ``flows/spar_checkpoint.py`` wrap it).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from dojo import gate, mirror, queue
from dojo.sidecar import read_sidecar, sidecar_path, write_sidecar
from dojo.storage import read_json, sha256_file, write_json
import skills
from skills import curriculum, sparring

log = logging.getLogger("dojo.spar")
STREAM = "state/stream.json"          # the trained-chunk records the share cap is measured on
STREAM_KEEP = 1000                    # records kept (the window is the newest spar.share_window of them)


# ---------------------------------------------------------------- sparring
def _training_level(cfg, skill: str) -> int:
    state = curriculum.load(cfg.root, list(cfg.curriculum.skills))
    if skill not in state["skills"]:
        return min(skills.get(skill).LEVELS)        # a skill outside the curriculum has mastered nothing
    return curriculum.training_level(state, skill)


def spar(cfg, checkpoint: str, skill: str | None = None, level: int | None = None,
         problems: int | None = None) -> dict:
    """Spar with ``checkpoint`` (a path, a name under checkpoints/, or ``latest``); queue its mistakes at high
    priority. ``skill``: default the checkpoint's (else the curriculum's first); ``level``: default the skill's
    training level; ``problems``: default ``spar.problems``. Returns checkpoint, step, skill, level, seed, asked,
    missed, examples, file (the queued file, or None), queued_id, accepted and message."""
    from model.checkpoint import LEDGER, parse_name, read_ledger
    from model.evaluate import Generator, resolve_checkpoint

    path = resolve_checkpoint(cfg, checkpoint)
    ledger = read_ledger(path) if (path / LEDGER).exists() else {}
    step = ledger.get("step", parse_name(path.name) or 0)
    skill = skill or (ledger.get("skill") if ledger.get("skill") in skills.SKILLS else cfg.curriculum.skills[0])
    module = skills.get(skill)
    if level is None:
        level = _training_level(cfg, skill)
    elif level not in module.LEVELS:
        raise ValueError(f"--level {level}: {skill} has levels {list(module.LEVELS)}")
    wanted = cfg.spar.problems if problems is None else problems
    if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 1:
        raise ValueError(f"--problems must be an integer >= 1, got {wanted!r}")
    seed = sparring.seed_for(path.name, step)
    asked, fresh = sparring.draw_problems(module, level, wanted, seed)
    gen = Generator.load(cfg, path, ledger)
    _, answers, scores = gen.attempt(module, asked, cfg.eval.max_new_tokens)
    correct = [s.correct for s in scores]
    records = sparring.build(asked, answers, correct, fresh)
    missed = len(records) // 3
    result = {"checkpoint": path.name, "step": step, "skill": skill, "level": level, "seed": seed,
              "asked": len(asked), "missed": missed, "examples": len(records), "file": None, "queued_id": None,
              "accepted": False, "eval_overlap": module.covers_space(level)}
    if not records:
        result["message"] = (f"{path.name} answered all {len(asked)} {skill} level-{level} problems correctly: "
                             f"no sparring file queued")
        return result
    block = {"checkpoint": path.name, "step": step, "skill": skill, "level": level, "seed": seed,
             "asked": len(asked), "missed": missed,
             "problem_generator": f"{module.GENERATOR_ID}@{module.GENERATOR_VERSION}",
             "eval_overlap": module.covers_space(level)}
    inbox = Path(cfg.root) / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    out = inbox / f"spar_{skill}_l{level}_{path.name}.jsonl"
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    write_sidecar(out, sparring.GENERATOR_ID, sparring.GENERATOR_VERSION, block, len(records),
                  spec="chat_sft_v1", skill=skill, level=level)
    meta = read_sidecar(out)
    meta["spar"] = block                          # what the stale guard reads back at claim time
    write_json(sidecar_path(out), meta)
    try:
        sha = sha256_file(out)
        same = [e for e in queue.list_entries(cfg) if e.sha256 == sha and e.state != "inbox"]
        if same:                                  # this checkpoint was sparred before: same seed, same answers
            result.update(queued_id=same[0].id, message=f"{path.name}: the same sparring file is already "
                                                        f"{same[0].state} as {same[0].id}; nothing new queued")
            return result
        admission = gate.admit(cfg, out, priority="high")
    finally:
        for p in (out, sidecar_path(out)):
            p.unlink(missing_ok=True)             # our own copy: the queue holds it now
    e = admission.entry
    result.update(file=str(e.path), queued_id=e.id, accepted=admission.accepted)
    verdict = f"queued at high priority as {e.id}" if admission.accepted else \
        f"REJECTED by the gate ({e.id} in failed/ with its reasons)"
    result["message"] = (f"{path.name}: {missed}/{len(asked)} {skill} level-{level} problems wrong -> "
                         f"{len(records)} sparring examples {verdict}")
    return result


# ---------------------------------------------------------------- guards at claim time
def is_spar(meta: dict | None) -> bool:
    """Whether a sidecar is a sparring file's."""
    return isinstance(meta, dict) and meta.get("generator_id") == sparring.GENERATOR_ID \
        and isinstance(meta.get("spar"), dict)


def newest_step(cfg) -> int | None:
    """The step of the newest checkpoint (by name: nothing is loaded or hashed), or None when there is none."""
    from model.checkpoint import candidates, parse_name

    found = candidates(cfg.root)
    return parse_name(found[-1].name) if found else None


def staleness(cfg, meta: dict | None) -> str | None:
    """Why a sparring file is stale (the model has moved on), or None when it is not stale or not sparring."""
    if not is_spar(meta):
        return None
    block = meta["spar"]
    step, skill, level = block.get("step"), block.get("skill"), block.get("level")
    newest = newest_step(cfg)
    if isinstance(step, int) and newest is not None and newest - step > cfg.spar.max_age_steps:
        return (f"stale sparring data: made from {block.get('checkpoint')} (step {step}); the newest checkpoint is "
                f"at step {newest}, more than spar.max_age_steps={cfg.spar.max_age_steps} later")
    if skill in skills.SKILLS and isinstance(level, int):
        now = _training_level(cfg, skill)
        if level != now:
            return (f"stale sparring data: {skill} level {level} from {block.get('checkpoint')}; the skill now "
                    f"trains level {now}")
    return None


def _read_stream(cfg) -> list[dict]:
    data = read_json(Path(cfg.root) / STREAM, expect=dict, what="sparring share records", default={})
    chunks = data.get("chunks") if isinstance(data, dict) else None
    return [c for c in chunks if isinstance(c, dict)] if isinstance(chunks, list) else []


def record_chunk(cfg, file_id: str, examples: int, spar_examples: int, checkpoint: str | None) -> None:
    """Add one trained chunk to ``state/stream.json`` (a locked read-modify-write; the newest STREAM_KEEP kept):
    ``examples`` trained, of which ``spar_examples`` were sparring (a sparring file's chunk: all of them; a
    curriculum file with sparring mixed in: its mixed share)."""
    with mirror.shared_file(cfg, STREAM):
        chunks = _read_stream(cfg)
        chunks.append({"file": file_id, "examples": int(examples), "spar_examples": int(spar_examples),
                       "spar": spar_examples > 0 and spar_examples >= examples, "checkpoint": checkpoint})
        write_json(Path(cfg.root) / STREAM, {"chunks": chunks[-STREAM_KEEP:]})


def mixed_examples(meta: dict, trained: int) -> int:
    """Of ``trained`` examples of a curriculum file (sidecar ``meta``), the sparring ones mixed in (pro rata)."""
    params = meta.get("params") if isinstance(meta.get("params"), dict) else {}
    spar_count, count = _count(params.get("spar_count")), _count(params.get("count"))
    return round(trained * spar_count / count) if spar_count and count else 0


def share(cfg) -> dict:
    """Sparring's share of the examples trained over the last ``spar.share_window`` chunks, and whether one more
    sparring chunk of the window's mean size would still keep it at or below ``spar.max_share``
    (``exceeds`` answers that for a given file)."""
    window = _read_stream(cfg)[-cfg.spar.share_window:]
    total = spar_total = 0
    for c in window:                              # a hand-edited record with a bad count counts as 0
        n = _count(c.get("examples"))
        total += n
        mixed = c.get("spar_examples")
        spar_total += min(n, _count(mixed)) if mixed is not None else (n if c.get("spar") is True else 0)
    now = {"chunks": len(window), "examples": total, "spar_examples": spar_total,
           "share": 0.0, "max_share": cfg.spar.max_share}
    if total:
        now["share"] = now["spar_examples"] / total
    now["share_after_one_more"] = _after(now, total / len(window) if window else 0.0)
    now["over_cap"] = now["share_after_one_more"] > cfg.spar.max_share
    return now


def _count(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _after(now: dict, more: float) -> float:
    total = now["examples"] + more
    return (now["spar_examples"] + more) / total if total > 0 else 1.0


def chunk_examples(cfg, meta: dict | None) -> float | None:
    """The examples a sparring file's chunk trains (its sidecar's count × ``spar.epochs``), None when unknown."""
    count = _count((meta or {}).get("example_count"))
    return count * cfg.spar.epochs if count else None


def exceeds(cfg, now: dict, meta: dict | None) -> bool:
    """Whether training the sparring file with sidecar ``meta`` (its own examples × ``spar.epochs``; unknown: the
    window's mean chunk) on top of ``now`` (``share``) would take sparring above ``spar.max_share``."""
    more = chunk_examples(cfg, meta)
    return now["over_cap"] if more is None else _after(now, more) > cfg.spar.max_share


def over_cap(cfg, meta: dict | None = None) -> bool:
    """True while claiming a sparring file (``meta``: its sidecar; None: one of the window's mean chunk size) would
    take sparring above ``spar.max_share`` (see ``share``)."""
    return exceeds(cfg, share(cfg), meta)


def wants_spar(cfg, promoted: bool) -> bool:
    """Whether evaluate/checkpoint starts sparring for a checkpoint it evaluated (``spar.after``)."""
    return cfg.spar.after == "every" or (cfg.spar.after == "promoted" and bool(promoted))


# ---------------------------------------------------------------- mixing into curriculum files
def mixable(cfg, skill: str) -> list:
    """Queued sparring files of ``skill``, newest first (the newest checkpoint's mistakes are the ones to fix)."""
    found = []
    for entry in queue.queued(cfg):
        try:
            meta = read_sidecar(entry.path)
        except ValueError:                        # a broken sidecar: the claim path sends it to failed/
            continue
        if is_spar(meta) and meta["spar"].get("skill") == skill:
            found.append((entry, meta))
    return [e for e, _ in sorted(found, key=lambda em: (em[1]["spar"].get("step") or 0, em[0].added_at),
                                 reverse=True)]


def take_for_mix(cfg, skill: str, budget: int) -> tuple[list[dict], list[dict]]:
    """Sparring examples of ``skill`` for the next curriculum file (``spar.mix``): queued sparring files are
    claimed newest first; a stale one (``staleness``) is retired to done/ with the reason; the others give their
    examples, whole triples, up to ``budget`` in all. Returns (rows, taken): ``taken`` is one record per file
    used (id, name, sha256, checkpoint, step, level, examples, taken), each now in processing/ until
    ``settle_mix`` retires it (mixed) or puts it back (the curriculum file was not queued)."""
    rows: list[dict] = []
    taken: list[dict] = []
    for entry in mixable(cfg, skill):
        if len(rows) + 3 > budget:
            break
        got = queue.claim(cfg, lambda e, want=entry.id: e.id != want)
        if got is None:                           # another claimer took it meanwhile
            continue
        meta = read_sidecar(got.path) or {}
        stale = staleness(cfg, meta)
        if stale is not None:
            queue.finish(cfg, got.id, "done", stale)
            log.warning("%s (%s) retired: %s", got.id, got.name, stale)
            continue
        with open(got.path, encoding="utf-8") as f:
            lines = [json.loads(line) for line in f if line.strip()]
        room = (budget - len(rows)) // 3 * 3      # a wrong answer's three examples stay together
        block = meta["spar"]
        rows += lines[:room]
        taken.append({"id": got.id, "name": got.name, "sha256": got.sha256, "checkpoint": block.get("checkpoint"),
                      "step": block.get("step"), "level": block.get("level"), "examples": len(lines),
                      "taken": min(room, len(lines))})
    return rows, taken


def settle_mix(cfg, taken: list[dict], into: str | None) -> None:
    """The sparring files ``take_for_mix`` claimed: retired to done/ saying which queued curriculum file
    (``into``, its queue id) holds their examples — or, when it was not queued (None), put back in the queue."""
    for t in taken:
        if into is None:
            queue.release(cfg, t["id"])
            continue
        rest = t["examples"] - t["taken"]
        left = (f"; its other {rest} examples were not trained (spar.max_share {cfg.spar.max_share:.0%} of a "
                f"curriculum file is the most mixed in, the newest files first)") if rest else ""
        queue.finish(cfg, t["id"], "done", f"mixed into curriculum file {into}: {t['taken']} of its "
                                           f"{t['examples']} examples{left}")
