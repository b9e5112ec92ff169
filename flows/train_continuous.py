"""train/continuous — on the training pool: claim the best queued file, re-check it, train one chunk, save, hand
the checkpoint to evaluate/checkpoint without waiting (superseding an older one still waiting for the eval pool:
``flows.start_newest``), next; top the queue up from the curriculum; stop on
cancel, max_chunks or max_hours. Only one runs per storage root (a lock); at start it returns files orphaned
by a killed run to the queue. On cancel the claimed file goes back to the queue unless its chunk was saved."""
import time

from prefect import flow, get_run_logger

from dojo import mirror, queue
from dojo.steps import chunk_plan
from dojo.storage import exclusive_lock
from flows import load_config, start_newest
from flows.evaluate_checkpoint import checkpoint as evaluate_inline
from tasks import pipeline as t


@flow(name="train", log_prints=True)
def continuous(max_chunks: int = -1, max_hours: float = -1.0, steps_per_chunk: int = -1,
               hand_off: str = "deployment", config: str | None = None) -> int:
    """-1 = take the value from config (pipeline.*); hand_off: "deployment" (eval pool) or "inline" (tests)."""
    cfg = load_config(config)
    p = cfg.pipeline
    max_chunks = p.max_chunks if max_chunks < 0 else max_chunks
    max_hours = p.max_hours if max_hours < 0 else max_hours
    steps = p.steps_per_chunk if steps_per_chunk < 0 else steps_per_chunk
    log, started, chunks, failures = get_run_logger(), time.monotonic(), 0, 0
    with exclusive_lock(cfg.root / "state" / "continuous.lock", "train/continuous"), \
            mirror.exclusive_lease(cfg, "continuous", "train/continuous"):    # a URL root: one across all hosts
        t.recover(cfg)
        while (not max_chunks or chunks < max_chunks) and (not max_hours or time.monotonic() - started < max_hours * 3600):
            t.top_up(cfg)
            claimed = t.claim(cfg)
            if claimed is None:
                time.sleep(10)            # nothing queued and no top-up (curriculum.low_water 0): poll
                continue
            outcome = t.check_claimed(cfg, claimed)
            if not outcome.accepted:
                continue
            chunk_cfg, chunk_steps = chunk_plan(cfg, claimed, steps or None)   # a sparring file: spar.epochs
            try:
                summary = t.train_chunk(chunk_cfg, outcome.train_file, chunk_steps, outcome.train_sha256)
            except Exception as exc:      # this file failed; the loop goes on unless it keeps failing
                t.fail(cfg, claimed, f"training failed: {exc!r}")
                failures += 1
                if failures >= p.max_failures:
                    raise
                continue
            except BaseException:         # cancelled (TerminationSignal) or interrupted mid-chunk: no checkpoint
                queue.release(cfg, claimed.id)
                raise
            failures, chunks = 0, chunks + 1
            t.finish(cfg, claimed, outcome)
            if hand_off == "inline":
                evaluate_inline(summary["checkpoint"], config)
            else:
                run = start_newest("evaluate/checkpoint", summary["checkpoint"], config, log,
                                   supersede=p.eval_backlog == "newest")
                log.info("handed %s to evaluate/checkpoint (run %s)", summary["checkpoint"], run.name)
    return chunks
