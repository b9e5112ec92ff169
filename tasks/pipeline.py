"""Prefect tasks: thin adapters over ``dojo.steps`` and ``model.train`` adding logging, retries where they
help (storage), and the artifacts users watch in the UI. Inputs and outputs are paths, ids and small frozen
dataclasses — never models or tensors (results are not persisted; ``NO_CACHE`` everywhere: every call is real
work on changing state)."""
from __future__ import annotations

from dataclasses import asdict

from prefect import get_run_logger, task
from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)
from prefect.cache_policies import NO_CACHE

from dojo import lineage_stats, oracle, steps
from dojo.steps import STEP_LOG, step_log
from dojo.text import human_size
from model import trackers

OPTS = {"cache_policy": NO_CACHE, "persist_result": False}


@task(**OPTS)
def recover(cfg) -> list[str]:
    done = steps.recover_orphans(cfg)
    for line in done:
        get_run_logger().warning("recovered an orphaned claim: %s", line)
    return done


@task(retries=2, retry_delay_seconds=5, **OPTS)
def top_up(cfg) -> list[str]:
    done = steps.top_up(cfg)
    for line in done:
        get_run_logger().info("queue top-up: %s", line)
    return done


@task(retries=2, retry_delay_seconds=5, **OPTS)
def claim(cfg) -> steps.Claimed | None:
    return steps.claim(cfg)


@task(**OPTS)
def check_claimed(cfg, claimed: steps.Claimed) -> steps.CheckOutcome:
    outcome = steps.check_claimed(cfg, claimed)
    v = outcome.validation
    from dojo.sidecar import read_sidecar
    from dojo.text import printable

    meta = read_sidecar(claimed.path) or {}
    rows = [("generator", meta.get("generator")), ("params", meta.get("params"))]
    rows += [(k, v.get(k)) for k in ("file", "spec", "depth", "validator", "total", "accepted", "rejected",
                                     "outcome", "sha256")]
    rows += [(f"rejected: {rule}", n) for rule, n in v["rejected_by_rule"].items()]
    rows += [(f"warning: {rule}", n) for rule, n in v["warnings_by_rule"].items()]
    create_table_artifact(key=f"lineage-{claimed.id}",     # fields come from files: control characters escaped
                          table=[{"field": printable(f, 200), "value": printable(x, 500)} for f, x in rows],
                          description=f"Lineage of {printable(claimed.name, 200)}")
    stats = lineage_stats.load(cfg)
    create_table_artifact(key="lineage-stats", table=lineage_stats.generator_rows(stats) or [{"generator": "none"}],
                          description="Rejections per generator@version")
    if not outcome.accepted:
        verdict = "retired" if v.get("outcome") == "retired" else "rejected"      # retired: stale sparring data
        get_run_logger().warning("claim-time check %s %s:\n%s", verdict, claimed.name, outcome.report)
    return outcome


@task(**OPTS)
def train_chunk(cfg, train_file: str, steps: int | None, sha256: str | None = None) -> dict:
    """One chunk; a progress artifact while it trains and the masking report after."""
    from model.launch import LaunchError, run_chunk   # here, or a train.processes-process accelerate job
    from validation.masking import MaskingError

    logger, steps_log = get_run_logger(), step_log(cfg)
    progress = create_progress_artifact(progress=0.0, key="train-progress", description=f"Training on {train_file}")
    said = {"quarter": 0}

    def on_progress(p: dict) -> None:
        # every logged step goes to the rotating file; the API (Prefect's database) gets a line per quarter
        line = (f"step {p['step']} ({p['chunk_step']}/{p['chunk_steps']}) loss {p['loss']:.4f} lr {p['lr']:.2e} "
                f"{p.get('tokens_per_s', 0):.0f} tokens/s")
        steps_log.info("%s %s", train_file, line)
        quarter = 4 * p["chunk_step"] // p["chunk_steps"]
        if quarter > said["quarter"]:
            said["quarter"] = quarter
            update_progress_artifact(artifact_id=progress, progress=100.0 * p["chunk_step"] / p["chunk_steps"])
            logger.info("%s (every step: %s)", line, cfg.root / STEP_LOG)

    try:
        result = run_chunk(cfg, train_file, steps=steps, on_progress=on_progress, sha256=sha256,
                           on_output=lambda line: steps_log.info("%s %s", train_file, line))
    except MaskingError as exc:
        create_markdown_artifact(key="masking-report", markdown=f"# Masking FAILED\n\n```\n{exc.report.format()}\n```")
        raise
    except LaunchError as exc:      # a train.processes job: its ranks' errors (a masking failure among them)
        create_markdown_artifact(key="masking-report", markdown=f"# Training job FAILED\n\n```\n{exc}\n```")
        raise
    from model.checkpoint import read_ledger

    ledger = read_ledger(result.checkpoint)
    m = ledger["masking"]
    checks = "\n".join(f"| {name} | {'PASS' if ok else 'FAIL'} |" for name, ok in m["checks"].items())
    warnings = "".join(f"\n- warning: {w}" for w in m.get("warnings", []))
    create_markdown_artifact(key="masking-report", markdown=(
        f"# Masking report: {result.checkpoint.name}\n\nmasked ratio {m['masked_ratio']:.3f}, fill ratio "
        f"{m['fill_ratio']:.3f}, multi-turn policy {m.get('multi_turn')}, {m.get('rewritten_turns', 0)} assistant "
        f"turn(s) rewritten by the chat template{warnings}\n\n| check | verdict |\n|---|---|\n{checks}\n"))
    summary = asdict(result)
    summary["checkpoint"] = str(result.checkpoint)
    return summary


@task(retries=2, retry_delay_seconds=5, **OPTS)
def finish(cfg, claimed: steps.Claimed, outcome: steps.CheckOutcome) -> None:
    steps.finish_trained(cfg, claimed, outcome)


@task(**OPTS)
def fail(cfg, claimed: steps.Claimed, reason: str) -> None:
    from dojo import queue

    queue.finish(cfg, claimed.id, "failed", reason)


@task(**OPTS)
def evaluate_and_promote(cfg, checkpoint: str) -> dict:
    out = steps.evaluate_and_promote(cfg, checkpoint)
    rows = [{"skill": out["skill"], "level": int(lv), "accuracy": round(r["accuracy"], 4), "correct": r["correct"],
             "n": r["n"], "overlaps_training": r["overlaps_training"]} for lv, r in out["levels"].items()]
    rows += [{"skill": out["skill"], "level": lv, "accuracy": "skipped (eval.mastered_every)", "correct": "-",
              "n": "-", "overlaps_training": "-"} for lv in out["skipped_levels"]]
    curves = f"Learning curves: [the Oracle]({oracle.url(cfg)}) (`dojo serve`, or `serve.enabled: true`)"
    skipped = (f" Mastered level(s) {out['skipped_levels']} skipped this time (eval.mastered_every)."
               if out["skipped_levels"] else "")
    create_table_artifact(key=f"eval-{out['skill']}", table=rows,
                          description=f"Eval of {out['checkpoint']}.{skipped} {curves}")
    create_table_artifact(key="leaderboard", table=out["leaderboard"] or [{"rank": "none"}],
                          description=f"Leaderboard of {out['skill']}: ranked by training level, then accuracy "
                                      f"there (`dojo leaderboard`)")
    report_regressions(cfg, out)
    create_markdown_artifact(key="promotion-decision", markdown=f"{out['decision_markdown']}\n{curves}\n")
    trackers.log_evaluation(cfg, out)                                  # train.report_to
    create_table_artifact(key="curriculum-state", table=steps.curriculum_rows(out["curriculum"]),
                          description="Curriculum: mastered and training level per skill, plateau actions")
    logger = get_run_logger()
    if out["overfitting"]:
        logger.warning("%s", out["overfitting"])
    if out["probe"]:
        logger.info("transfer probes: %s", {k: out["probe"].get(k) for k in ("score", "base", "delta", "error")})
    scored = ", ".join(f"L{lv} {r['accuracy']:.3f}" for lv, r in out["levels"].items())    # evaluated levels only
    logger.info("%s: %s%s", out["checkpoint"], scored, f"; skipped level(s) {out['skipped_levels']} "
                f"(eval.mastered_every)" if out["skipped_levels"] else "")
    if out["advance"]:
        logger.info("curriculum advanced: %s", out["advance"])
    logger.info("promotion: %s — %s", "promoted" if out["promoted"] else "not promoted", out["reason"])
    return {k: v for k, v in out.items() if k not in ("curriculum", "decision_markdown")}


def report_regressions(cfg, out: dict) -> None:
    """Each regression on a mastered level: a ``dojo.regression`` event (resource: the checkpoint), a markdown
    artifact and a warning log line. An automation can notify on the event (docs/operations.md)."""
    from prefect.events import emit_event

    from dojo.leaderboard import regression_markdown

    if not out["regressions"]:
        return
    for r in out["regressions"]:
        emit_event("dojo.regression", resource={"prefect.resource.id": f"dojo.checkpoint.{out['checkpoint']}",
                                                "prefect.resource.name": out["checkpoint"]},
                   payload={"checkpoint": out["checkpoint"], "step": out["step"], "skill": r["skill"],
                            "level": r["level"], "best": r["best"], "best_checkpoint": r["best_checkpoint"],
                            "accuracy": r["accuracy"], "tolerance": r["tolerance"]})
        get_run_logger().warning("regression: %s scores %.3f on %s level %d, %.3f below the best %.3f (%s)",
                                 out["checkpoint"], r["accuracy"], r["skill"], r["level"], r["drop"], r["best"],
                                 r["best_checkpoint"])
    create_markdown_artifact(key="regression", markdown=regression_markdown(out["checkpoint"], out["regressions"]))


@task(retries=2, retry_delay_seconds=5, **OPTS)
def generate_curriculum_file(cfg, count: int | None = None) -> str:
    line = steps.generate_for_curriculum(cfg, count)
    get_run_logger().info(line)
    return line


@task(**OPTS)
def maintenance(cfg, apply: bool) -> dict:
    """Retention: plan, apply when asked; the usage and what went (or would go) as an artifact."""
    from dojo import maintenance as retention

    todo = retention.plan(cfg)
    if apply:
        todo.removals = retention.apply(cfg, todo)
    create_markdown_artifact(key="storage-maintenance", markdown=todo.markdown(applied=apply))
    create_table_artifact(key="storage-usage", table=[{"folder": k, "bytes": v, "size": human_size(v)}
                                                      for k, v in sorted(todo.usage.items())],
                          description=f"Storage per folder under {cfg.root}")
    get_run_logger().info("%s", todo.format(applied=apply).split("\n", 1)[0])
    return {"applied": apply, "removed": len(todo.removals), "freed_bytes": todo.freed,
            "usage_bytes": sum(todo.usage.values())}
