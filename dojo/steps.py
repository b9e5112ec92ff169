"""The loop's steps as plain functions; the pipeline's Prefect tasks (``tasks/pipeline.py``) wrap them and the
flows in ``flows/`` only wire them.

claim → check_claimed → train one chunk → finish → evaluate → curriculum → promote, and the queue top-up from
the curriculum. Each function takes the Config and paths/ids and returns small frozen dataclasses or dicts, so
tasks can pass them around without pickling models.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from dojo import gate, promotion, queue
from dojo.sidecar import read_sidecar
from dojo import mirror
from skills import curriculum

log = logging.getLogger("dojo.steps")
STEP_LOG = Path("logs") / "train.log"


def step_log(cfg) -> logging.Logger:
    """The per-step training log: ``logs/train.log`` under the storage root, rotated at ``retention.log_max_mb``
    with ``retention.log_backups`` old files kept, so days of steps never fill the disk or Prefect's database
    (which gets a summary line per quarter chunk instead)."""
    from logging.handlers import RotatingFileHandler

    path = Path(cfg.root) / STEP_LOG
    logger = logging.getLogger(f"dojo.steps.file.{path}")
    if not logger.handlers:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = RotatingFileHandler(path, maxBytes=int(cfg.retention.log_max_mb * 2**20),
                                      backupCount=cfg.retention.log_backups, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


@dataclass(frozen=True)
class Claimed:
    id: str
    name: str
    path: str           # in processing/
    sha256: str
    skill: str | None
    level: int | None
    spar: bool = False     # a sparring file: its chunk is spar.epochs passes over it (``chunk_plan``)


@dataclass(frozen=True)
class CheckOutcome:
    accepted: bool
    train_file: str | None     # what to train (the claimed file, or its valid lines when some were rejected)
    validation: dict           # FileReport.to_dict() + sha256
    report: str
    train_sha256: str | None = None   # content hash of train_file (so training does not hash it again)


# ---------------------------------------------------------------- queue side
def lineage_files(cfg) -> set[str]:
    """sha256 of every file trained into the current lineage (from the latest checkpoint's ledger). "Latest" is the
    newest valid checkpoint, the one the next chunk resumes from: a file trained only into a quarantined one is
    not in the lineage and goes back to the queue."""
    from model.checkpoint import latest as latest_of, read_ledger

    latest = latest_of(cfg)
    return set(read_ledger(latest).get("lineage_files", [])) if latest else set()


def recover_orphans(cfg) -> list[str]:
    """Files left in processing/ by a run that died (SIGKILL, power loss). Call only while holding the
    continuous-loop lock, so no live run owns them. A file whose chunk reached a checkpoint is finished as
    done (it must not be trained twice into the lineage); one whose sidecar is broken goes to failed/ with the
    reason; any other goes back to its queue."""
    trained = lineage_files(cfg)
    out = []
    for entry in [e for e in queue.list_entries(cfg) if e.state == "processing"]:
        try:
            meta = read_sidecar(entry.path) or {}
        except ValueError as exc:   # a broken sidecar: keep both files as they are, in failed/
            queue.finish(cfg, entry.id, "failed", f"recovered from processing/: {exc}")
            out.append(f"{entry.id} {entry.name}: its sidecar is broken; moved to failed/ ({exc})")
            continue
        shas = {entry.sha256, meta.get("train_sha256")}
        if shas & trained:
            queue.finish(cfg, entry.id, "done")
            out.append(f"{entry.id} {entry.name}: its chunk was saved before the crash; marked done")
        else:
            queue.release(cfg, entry.id)
            out.append(f"{entry.id} {entry.name}: returned to the queue")
    return out


def top_up(cfg) -> list[str]:
    """When fewer than ``curriculum.low_water`` files are queued, generate one curriculum file (the chosen
    skill's training level) into the inbox and admit it through the gate. Returns what was done. With
    ``spar.mix`` queued sparring files do not count: they are trained inside the file generated here."""
    queued = (sum(1 for e in queue.queued(cfg) if _spar_meta(e) is None) if cfg.spar.mix
              else sum(queue.depth(cfg).values()))
    if queued >= cfg.curriculum.low_water:
        return []
    return [generate_for_curriculum(cfg)]


def generate_for_curriculum(cfg, count: int | None = None) -> str:
    """Choose skill and level by the curriculum strategy, generate, and admit through the gate. With
    ``spar.mix`` the skill's queued sparring files are mixed in (``dojo.spar.take_for_mix``: at most
    ``spar.max_share`` of the file) and the file is queued at high priority, as the sparring files were."""
    from dojo import spar
    from dojo.generate import generate_file

    plan = curriculum_plan(cfg)
    skill, level, seed = plan["skill"], plan["level"], plan["seed"]
    count = count or cfg.curriculum.examples_per_file
    budget = min(int(count * cfg.spar.max_share), count - 1)         # at least one curriculum example
    rows, taken = spar.take_for_mix(cfg, skill, budget) if cfg.spar.mix else ([], [])
    inbox = Path(cfg.root) / "inbox"
    into = None
    try:
        path = generate_file(skill, level, count, seed, inbox / f"curriculum_{skill}_l{level}_s{seed}.jsonl",
                             force=True, replay_levels=tuple(plan["replay_levels"]), replay_share=plan["replay_share"],
                             mixed=rows, mixed_from=taken)
        admission = gate.admit(cfg, path, priority="high" if rows else "normal")
        for p in (path, path.with_name(path.stem + ".meta.json")):
            p.unlink(missing_ok=True)     # our own generated copy: the queue holds it now
        into = admission.entry.id if admission.accepted else None
    finally:
        spar.settle_mix(cfg, taken, into)
    verdict = "queued" if admission.accepted else "REJECTED by the gate"
    replay = (f", {plan['replay_share']:.0%} replayed from mastered level(s) {plan['replay_levels']}"
              if plan["replay_levels"] and plan["replay_share"] else "")
    mixed = (f", {len(rows)} sparring examples mixed in from {', '.join(t['id'] for t in taken)} (high priority)"
             if rows else "")
    return (f"generated {count} {skill} level-{level} examples (seed {seed}{replay}{mixed}): {verdict} as "
            f"{admission.entry.id}")


def next_curriculum_file(cfg) -> tuple[str, int, int]:
    """(skill, level, seed) of the next curriculum file (``curriculum_plan``)."""
    plan = curriculum_plan(cfg)
    return plan["skill"], plan["level"], plan["seed"]


def curriculum_plan(cfg) -> dict:
    """The next curriculum file: skill, level, seed, and the mastered levels replayed with their share
    (``curriculum.replay_share`` plus any plateau boost), counted in ``state/curriculum.json``. A locked
    read-modify-write: the eval pool records evaluations in the same file at the same time."""
    c = cfg.curriculum
    with mirror.shared_file(cfg, "state/curriculum.json"):    # the eval pool writes it too
        state = curriculum.load(cfg.root, list(c.skills))
        skill = curriculum.choose_skill(state, c.strategy, list(c.skills), dict(zip(c.skills, c.weights)), c.seed)
        level = curriculum.training_level(state, skill)
        replay_levels, share = curriculum.replay_plan(state, skill, c.replay_share)
        state["files_generated"] = state.get("files_generated", 0) + 1
        curriculum.save(cfg.root, state)
    return {"skill": skill, "level": level, "seed": c.seed + state["files_generated"],
            "replay_levels": replay_levels if share else [], "replay_share": share}


def record_progress(cfg, skill: str, level: int, accuracy: float, checkpoint: str,
                    step: int, slipped: list[int] | None = None) -> tuple[dict, dict | None]:
    """Record an evaluation at the training level in ``state/curriculum.json`` (a locked read-modify-write:
    the training pool counts generated files in the same file). ``slipped``: the mastered levels this evaluation
    found below the promoted checkpoint beyond the tolerance (None: none was evaluated). Returns the new state
    and the advance, if any."""
    with mirror.shared_file(cfg, "state/curriculum.json"):    # the training pool writes it too
        state = curriculum.load(cfg.root, list(cfg.curriculum.skills))
        c = cfg.curriculum
        open_skills = [s for s in c.skills if s in state["skills"] and not curriculum.mastered(state, s)]
        advance = curriculum.record_eval(state, skill, level, accuracy, checkpoint, step, c.window, c.threshold,
                                         c.plateau_evals, c.strategy in ("equal", "catch_up") and len(open_skills) > 1,
                                         c.plateau_lr_factor, slipped)
        curriculum.save(cfg.root, state)
    return state, advance


def _spar_meta(entry) -> dict | None:
    """A queued file's sidecar when it is a sparring file, else None."""
    from dojo import spar

    try:
        meta = read_sidecar(entry.path)
    except ValueError:                     # a broken sidecar: queue.claim_from sends it to failed/ with the reason
        return None
    return meta if spar.is_spar(meta) else None


def claim(cfg) -> Claimed | None:
    """The highest-priority, oldest queued file, into processing/.

    Sparring files are skipped — they wait in the queue — with ``spar.mix`` (the default: they are never chunks
    of their own; the next generated curriculum file carries their examples, queued at high priority), and
    without it while one's chunk would take sparring above its share (``dojo.spar.exceeds``: the file's own
    examples against the last chunks'). When only skipped files are queued a curriculum file is generated and
    claimed. Generated data never overtakes a queued file (a user's, or one returned after a crash)."""
    from dojo import spar

    share = spar.share(cfg)            # the trained stream, read once; each queued sparring file is checked against it

    def skip(entry) -> bool:
        meta = _spar_meta(entry)
        return meta is not None and (cfg.spar.mix or spar.exceeds(cfg, share, meta))

    entry = queue.claim(cfg, skip)
    if entry is None and any(skip(e) for e in queue.queued(cfg)):
        if not cfg.spar.mix:
            log.info("sparring is %.0f%% of the last %d chunks' examples, one more sparring file would pass "
                     "spar.max_share %.0f%%: sparring files wait, the curriculum trains", 100 * share["share"],
                     share["chunks"], 100 * share["max_share"])
        log.info("queue top-up: %s", generate_for_curriculum(cfg))
        entry = queue.claim(cfg, skip)
    if entry is None:
        return None
    meta = read_sidecar(entry.path) or {}
    return Claimed(entry.id, entry.name, str(entry.path), entry.sha256, meta.get("skill"), meta.get("level"),
                   spar.is_spar(meta))


def chunk_plan(cfg, claimed: Claimed, steps: int | None):
    """The config and step count a claimed file trains with. A curriculum file gets the pipeline's chunk
    (``steps`` optimizer steps) at its skill's learning rate: ``train.learning_rate`` (and ``muon_lr``) times the
    skill's plateau scale (``curriculum.plateau_lr_factor``; ``state/curriculum.json``). A sparring file (without
    ``spar.mix``) gets ``spar.epochs`` passes over itself — a few hundred corrections trained for a whole
    curriculum-sized chunk would be repeated ~10 times, and two thirds of their answers are "It is (in)correct.":
    in a first A/B that knocked BIN level 1 back to ~0 after each one."""
    if claimed.spar:
        return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=cfg.spar.epochs)), None
    if claimed.skill is None or claimed.skill not in cfg.curriculum.skills:
        return cfg, steps
    with mirror.shared_file(cfg, "state/curriculum.json"):
        scale = curriculum.lr_scale(curriculum.load(cfg.root, list(cfg.curriculum.skills)), claimed.skill)
    if scale == 1.0:
        return cfg, steps
    log.info("%s trains at %.3f of train.learning_rate: %s's plateaus lowered it (state/curriculum.json)",
             claimed.name, scale, claimed.skill)
    return dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, learning_rate=cfg.train.learning_rate * scale, muon_lr=cfg.train.muon_lr * scale)), steps


def reusable_verdict(cfg, claimed: Claimed, meta: dict) -> dict | None:
    """The admission verdict in the sidecar, when it still holds: the same content (sha256), the same validator
    version and the same deciding config (``model.data.verdict_key``), accepted with no rejected line."""
    from model.data import verdict_key

    v = meta.get("validation")
    if not isinstance(v, dict):
        return None
    from validation.validate import VALIDATOR

    same = (v.get("sha256") == claimed.sha256 and v.get("validator") == VALIDATOR
            and v.get("verdict_key") == verdict_key(cfg) and v.get("outcome") == "accepted" and not v.get("rejected"))
    return v if same else None


def check_claimed(cfg, claimed: Claimed, tokenizer=None) -> CheckOutcome:
    """The claim-time re-check of a queued file (the admission gate is ``dojo.gate``). The admission verdict is
    reused when it still holds (``reusable_verdict``); a file dropped into queue/ by hand, or one checked under
    another config or validator, is checked again (and its tokenized cache built). Rejected → failed/ with the
    report. Partly rejected → train only the valid lines; the rejected ones are kept in failed/ with reasons."""
    from model import data
    from validation.validate import write_split

    path = Path(claimed.path)
    meta = read_sidecar(path) or {}
    from dojo import spar

    stale = spar.staleness(cfg, meta)
    if stale is not None:                  # the model has moved on: retired to done/ with the reason, not trained
        queue.finish(cfg, claimed.id, "done", stale)
        log.warning("%s (%s) retired: %s", claimed.id, claimed.name, stale)
        return CheckOutcome(False, None, {"outcome": "retired", "reason": stale, "rejected_by_rule": {},
                                          "warnings_by_rule": {}}, f"{claimed.name}: retired, not trained: {stale}")
    reused = reusable_verdict(cfg, claimed, meta)
    if reused is not None:
        return CheckOutcome(True, str(path), reused,
                            f"{claimed.name}: admission verdict reused ({reused['validator']}, "
                            f"{reused['accepted']}/{reused['total']} lines valid)", claimed.sha256)
    if tokenizer is None:
        from model.loading import load_tokenizer

        tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)
    report, build = data.check_file(path, cfg, gate.gate_depth(cfg, None), tokenizer=tokenizer, build_cache=True)
    if not report.accepted:
        if build is not None:
            build.discard()
        validation = gate.record(cfg, path, report, claimed.sha256)
        queue.finish(cfg, claimed.id, "failed", report.format(limit=50))
        return CheckOutcome(False, None, validation, report.format())
    train_file, train_sha = path, claimed.sha256
    if report.rejected:
        failed = Path(cfg.root) / "failed"
        failed.mkdir(parents=True, exist_ok=True)
        train_file = path.with_name(f".train-{path.name}")
        write_split(report, path, train_file, failed / f"{path.stem}.rejected.jsonl")
        shutil.copyfile(path.with_name(path.stem + ".meta.json"), train_file.with_name(train_file.stem + ".meta.json"))
        from dojo.storage import sha256_file

        train_sha = sha256_file(train_file)
        meta = read_sidecar(path) or {}
        meta["train_sha256"] = train_sha    # what the lineage will record (see recover_orphans)
        from dojo.sidecar import sidecar_path
        from dojo.storage import write_json

        write_json(sidecar_path(path), meta)
    data.commit_cache(cfg, build, tokenizer, train_sha, str(path))
    data.prepare(cfg, train_file, tokenizer, train_sha)     # plan + masking verdict now; training only opens them
    validation = gate.record(cfg, path, report, claimed.sha256, {"verdict_key": data.verdict_key(cfg)})
    return CheckOutcome(True, str(train_file), validation, report.format(), train_sha)


def finish_trained(cfg, claimed: Claimed, outcome: CheckOutcome) -> None:
    """The chunk is saved: the file is done (and a split-off training copy removed — its lines are the file's).
    The chunk's examples are recorded for the sparring share (``dojo.spar.record_chunk``)."""
    from dojo import spar
    from model.checkpoint import candidates, read_ledger

    newest = (candidates(cfg.root) or [None])[-1]          # the chunk just saved (by name: nothing is hashed)
    ledger = read_ledger(newest) if newest is not None else {}
    files = ledger.get("data_files") or [{}]
    examples = ledger.get("examples_trained", 0) if files[0].get("sha256") == outcome.train_sha256 else 0
    try:
        meta = read_sidecar(claimed.path) or {}
    except ValueError:
        meta = {}
    spar_examples = examples if spar.is_spar(meta) else spar.mixed_examples(meta, examples)
    spar.record_chunk(cfg, claimed.id, examples, spar_examples, newest.name if newest is not None else None)
    queue.finish(cfg, claimed.id, "done")
    if outcome.train_file and Path(outcome.train_file).name.startswith(".train-"):
        t = Path(outcome.train_file)
        t.unlink(missing_ok=True)
        t.with_name(t.stem + ".meta.json").unlink(missing_ok=True)


# ---------------------------------------------------------------- evaluation side
def evaluate_and_promote(cfg, checkpoint: str) -> dict:
    """Score a checkpoint at its skill's training level, and on the mastered levels below it every
    ``eval.mastered_every``-th evaluation of the skill or whenever it would be promoted (it beats the promoted one
    at the training level): the regression guard never decides on a skipped level. Record curriculum progress
    (advance, plateau), decide promotion, score the transfer probes of a promoted checkpoint, append the
    leaderboard row and find regressions against the best checkpoint per mastered level. Returns what happened."""
    from dojo import leaderboard
    from model.checkpoint import read_ledger
    from model.evaluate import evaluate, resolve_checkpoint

    path = resolve_checkpoint(cfg, checkpoint)
    ledger = read_ledger(path)
    skills = list(cfg.curriculum.skills)
    skill = ledger.get("skill") if ledger.get("skill") in skills else skills[0]
    state = curriculum.load(cfg.root, skills)
    level = curriculum.training_level(state, skill)
    below = [lv for lv in range(1, state["skills"][skill]["level"] + 1) if lv != level]    # mastered
    due = cfg.eval.mastered_every <= 1 or len(state["skills"][skill]["history"]) % cfg.eval.mastered_every == 0
    asked = below + [level] if due else [level]
    levels = {lv: r for lv, r in evaluate(cfg, path, skill, asked)["skills"][skill]["levels"].items()
              if int(lv) in asked}
    forced = False
    if below and not due and _would_promote(promotion.current(cfg.root), skill, level, levels[str(level)]["accuracy"]):
        forced = True                           # the guard must see every mastered level before a promotion
        report = evaluate(cfg, path, skill, below)
        levels.update({lv: r for lv, r in report["skills"][skill]["levels"].items() if int(lv) in below})
    levels = dict(sorted(levels.items(), key=lambda x: int(x[0])))
    scores = {lv: r["accuracy"] for lv, r in levels.items()}
    skipped = [lv for lv in below if str(lv) not in scores]
    tolerance = cfg.curriculum.promotion_tolerance
    seen = [lv for lv in below if str(lv) in scores]
    slipped = sorted(promotion.slipped(scores, promotion.current(cfg.root), skill, seen, tolerance)) if seen else None
    state, advance = record_progress(cfg, skill, level, scores[str(level)], path.name, ledger["step"], slipped)
    mastered = [lv for lv in range(1, state["skills"][skill]["level"] + 1) if lv != level]
    with mirror.shared_file(cfg, *promotion.POINTERS):   # decide against the pointer as it is when we write it
        decision = promotion.decide(path.name, scores, promotion.current(cfg.root), skill, level, mastered, tolerance)
        unseen = [lv for lv in mastered if str(lv) not in scores]
        if decision.promote and unseen:          # the pointer changed since we looked (a rollback): stay sound
            decision = promotion.Decision(False, path.name, decision.previous, skill, level,
                                          f"mastered level(s) {unseen} were not evaluated and the promoted "
                                          f"checkpoint changed during evaluation; the next evaluation decides")
        promotion.apply(cfg.root, decision, str(path), {skill: scores})
    probe = None
    if decision.promote:
        try:
            probe = probe_scores(cfg, path, ledger)
        except Exception as exc:                 # noqa: BLE001 - the promotion stands; the probe is reported missing
            log.warning("transfer probes of %s failed: %r", path.name, exc)
            probe = {"error": repr(exc)[:500]}
    with mirror.shared_file(cfg, leaderboard.REL):
        rows = leaderboard.load(cfg.root)
        found = leaderboard.regressions(rows, skill, scores, mastered, tolerance)
        row = leaderboard.make_row(path.name, ledger["step"], skill, level, scores, skipped, decision.promote,
                                   ledger.get("train_loss"), ledger.get("val_loss"), probe)
        leaderboard.append(cfg.root, row)
    rows.append(row)
    return {"checkpoint": path.name, "step": ledger["step"], "skill": skill, "training_level": level,
            "levels": levels, "skipped_levels": skipped, "forced_mastered_eval": forced, "advance": advance,
            "promoted": decision.promote, "reason": decision.reason, "decision_markdown": decision.markdown(),
            "curriculum": state, "regressions": found, "probe": probe,
            "overfitting": leaderboard.overfitting(rows, cfg.eval.overfit_gap),
            "leaderboard": leaderboard.table_rows(leaderboard.ranked(rows, skill, 20))}


def _would_promote(pointer: dict | None, skill: str, level: int, accuracy: float) -> bool:
    """Whether ``accuracy`` at the training level beats the promoted checkpoint (promotion.decide's first test)."""
    return pointer is None or accuracy > pointer.get("eval", {}).get(skill, {}).get(str(level), -1.0)


BASE_PROBES = "state/probes-base.json"


def probe_scores(cfg, path: Path, ledger: dict) -> dict:
    """Transfer-probe score of a checkpoint with the base model's score (measured once per base model and probe
    version, cached in ``state/probes-base.json``) and the delta."""
    from dojo.storage import read_json, write_json
    from model.evaluate import run_probes
    from skills.probes import PROBES_VERSION

    base_id = {"model": cfg.model.name_or_path, "init": cfg.model.init, "version": PROBES_VERSION}
    cached = read_json(Path(cfg.root) / BASE_PROBES, expect=dict, what="base-model probe scores")
    if not cached or {k: cached.get(k) for k in base_id} != base_id:
        if cfg.model.init == "random":           # no pretrained weights: the base knows nothing by construction
            cached = {**base_id, "score": 0.0, "by_task": {}, "note": "model.init random: the base scores 0"}
        else:
            cached = {**base_id, **run_probes(cfg, cfg.model.name_or_path)}
        write_json(Path(cfg.root) / BASE_PROBES, cached)
        mirror.push_file(cfg, BASE_PROBES)
    result = run_probes(cfg, path, ledger)
    return {**result, "base": cached["score"], "delta": round(result["score"] - cached["score"], 6)}


def curriculum_rows(state: dict) -> list[dict]:
    rows = []
    for skill, s in state["skills"].items():
        recent = [h["accuracy"] for h in s["history"]][-3:]
        p = s.get("plateau", {})
        last = (s.get("plateau_actions") or [{}])[-1]
        rows.append({"skill": skill, "mastered_level": s["level"], "training_level": curriculum.training_level(state, skill),
                     "evals": len(s["history"]), "last_3": ", ".join(f"{a:.3f}" for a in recent),
                     "best_at_level": "-" if p.get("best") is None else f"{p['best']:.3f}",
                     "evals_since_best": p.get("since_best", 0), "replay_boost": p.get("replay_boost", 0.0),
                     "resting_files": p.get("rest", 0), "lr_scale": p.get("lr_scale", 1.0),
                     "slipped_levels": "?" if p.get("slipped") is None else ", ".join(map(str, p["slipped"])) or "-",
                     "last_plateau_action": (f"{last['time']}: {last['action']} — {last['reason']}" if last else "-")})
    return rows
