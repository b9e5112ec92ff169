"""Retention and the pointers it must never lose: `dojo maintenance` is a dry run unless told to apply; whatever
the policy, the promoted checkpoint, the best per skill and level, the newest, the not-yet-evaluated and the
named ones survive; queue folders, eval reports and temp leftovers go by age; a trained file whose file went is
still refused by the queue; `dojo promote` rolls back by hand through the same locked pointer; curriculum.json
loses no update when both pools write it at once; `dojo up` turns Prefect's database vacuum on; per-step
training logs rotate."""
import datetime as dt
import json
import multiprocessing
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dojo import config, maintenance, promotion, queue, steps
from dojo.cli import generate_file, main
from dojo.storage import StateError
from model import checkpoint as ckpt
from skills import curriculum

START = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.timezone.utc)
DAY = 86400.0
# step -> eval scores in its ledger ({} = not evaluated yet)
LINEAGE = {
    10: {"bin": {"1": 0.40}},
    20: {"bin": {"1": 0.95}},                    # best on level 1 (the tie at step 60 is newer, so 60 wins)
    30: {"bin": {"1": 0.70}},
    40: {"bin": {"1": 0.90, "2": 0.30}},         # promoted
    50: {"bin": {"1": 0.85, "2": 0.55}},         # best on level 2
    60: {"bin": {"1": 0.95, "2": 0.20}},
    70: {"bin": {"1": 0.80, "2": 0.25}},
    80: {},                                      # not evaluated yet (newer than the promoted one)
    90: {"bin": {"1": 0.50, "2": 0.10}},
}
PROMOTED = 40


def name_of(home: Path, step: int) -> str:
    return next(d.name for d in ckpt.candidates(home) if ckpt.parse_name(d.name) == step)


def cfg_for(home: Path, **retention) -> config.Config:
    return config.from_dict({"storage": {"root": str(home)}, "retention": retention}, env={})


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, tiny_model_dir):
    """A root with nine checkpoints (weights only) whose ledgers carry LINEAGE's scores, step 40 promoted."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    home = tmp_path_factory.mktemp("retention") / "home"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for i, (step, scores) in enumerate(LINEAGE.items()):
        ledger = {"skill": "bin", "level": 2 if step >= 40 else 1, **({"eval": scores} if scores else {})}
        ckpt.save_checkpoint(home, step, model, tokenizer, ledger, None, now=START + dt.timedelta(hours=i))
    promoted = name_of(home, PROMOTED)
    decision = promotion.Decision(True, promoted, None, "bin", 2, "test")
    promotion.apply(home, decision, str(home / "checkpoints" / promoted), LINEAGE[PROMOTED])
    return home


@pytest.fixture
def home(pristine, tmp_path):
    copy = tmp_path / "home"
    shutil.copytree(pristine, copy)
    return copy


def snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def surviving_steps(home: Path) -> set[int]:
    return {ckpt.parse_name(d.name) for d in ckpt.candidates(home)}


# ---------------------------------------------------------------- checkpoints
def test_dry_run_lists_what_would_go_and_removes_nothing(home, capsys, monkeypatch):
    monkeypatch.setenv("DOJO_HOME", str(home))
    (home.parent / "r.yaml").write_text(f"storage: {{root: {home}}}\nretention: {{keep_last_checkpoints: 2}}\n")
    before = snapshot(home)
    assert main(["--config", str(home.parent / "r.yaml"), "maintenance"]) == 0
    out = capsys.readouterr().out
    assert snapshot(home) == before
    for step in (10, 20, 30, 70):
        assert f"checkpoints/{name_of(home, step)}" in out
    assert "would remove 4 item(s)" in out and "nothing was removed" in out
    assert f"{name_of(home, PROMOTED)}  (promoted" in out


def test_apply_keeps_promoted_best_newest_unevaluated_and_named(home, capsys, monkeypatch):
    cfg = cfg_for(home, keep_last_checkpoints=1, keep=[name_of(home, 30)])
    todo = maintenance.plan(cfg)
    kept = todo.kept
    assert "promoted" in kept[name_of(home, PROMOTED)]
    assert kept[name_of(home, 60)] == ["best on bin level 1 (0.950)"]      # the tie with step 20 goes to the newer
    assert kept[name_of(home, 50)] == ["best on bin level 2 (0.550)"]
    assert kept[name_of(home, 80)] == ["not evaluated yet"]
    assert kept[name_of(home, 90)] == ["among the newest 1"]
    assert kept[name_of(home, 30)] == ["named in retention.keep"]
    freed = todo.freed
    removed = maintenance.apply(cfg, todo)
    assert surviving_steps(home) == {30, 40, 50, 60, 80, 90}
    assert {ckpt.parse_name(r.path.name) for r in removed} == {10, 20, 70}
    assert freed > 3 * 1_000_000 and sum(r.bytes for r in removed) == freed
    assert not list((home / "checkpoints").glob(".deleting-*"))
    lines = [json.loads(x) for x in (home / "state" / "maintenance.jsonl").read_text().splitlines()]
    assert sorted(x["path"] for x in lines) == sorted(f"checkpoints/{r.path.name}" for r in removed)
    assert ckpt.latest_checkpoint(home).name == name_of(home, 90)          # training resumes where it was
    assert promotion.current(home)["checkpoint"] == name_of(home, PROMOTED)


def test_promoted_and_best_survive_any_policy(home):
    """Random policies, everything aged ten years: the promoted, each best and the newest always stay."""
    rng = random.Random(7)
    names = [d.name for d in ckpt.candidates(home)]
    future = time.time() + 3650 * DAY
    for _ in range(40):
        policy = {"keep_last_checkpoints": rng.randint(1, 12), "keep": rng.sample(names, rng.randint(0, 2)),
                  **{k: rng.choice([0.0, 0.001, 1.0]) for k in ("done_days", "failed_days", "trash_days",
                                                                  "eval_days", "quarantine_days", "cache_days")}}
        todo = maintenance.plan(cfg_for(home, **policy), now=future)
        gone = {r.path.name for r in todo.removals if r.kind == "checkpoint"}
        for must in (PROMOTED, 50, 60, 80, 90, *(ckpt.parse_name(n) for n in policy["keep"])):
            assert name_of(home, must) not in gone, (policy, must)
    cfg = cfg_for(home, keep_last_checkpoints=1, done_days=0.001, eval_days=0.001, cache_days=0.001)
    maintenance.apply(cfg, maintenance.plan(cfg, now=future))
    assert surviving_steps(home) == {PROMOTED, 50, 60, 80, 90}


def test_a_promotion_after_the_plan_is_not_removed(home):
    cfg = cfg_for(home, keep_last_checkpoints=1)
    todo = maintenance.plan(cfg)
    assert name_of(home, 70) in {r.path.name for r in todo.removals}
    promotion.promote_by_hand(cfg, home / "checkpoints" / name_of(home, 70), "the user prefers it")
    maintenance.apply(cfg, todo)
    assert 70 in surviving_steps(home)


def test_broken_promotion_pointer_stops_checkpoint_removal(home, capsys, monkeypatch):
    (home / "state" / "promoted.json").write_text('{"checkpoint": ')
    before = snapshot(home)
    with pytest.raises(StateError, match="promoted.json"):
        maintenance.plan(cfg_for(home, keep_last_checkpoints=1))
    monkeypatch.setenv("DOJO_HOME", str(home))
    assert main(["maintenance", "--apply"]) == 2
    assert "promoted.json" in capsys.readouterr().err
    assert snapshot(home) == before


# ---------------------------------------------------------------- queue folders, eval, temps
def test_old_queue_files_go_and_trained_content_stays_refused(home, tmp_path):
    cfg = cfg_for(home, done_days=7, failed_days=30, trash_days=1)
    trained = generate_file("bin", 1, 20, 1, tmp_path / "trained.jsonl")
    rejected = generate_file("bin", 1, 20, 2, tmp_path / "rejected.jsonl")
    kept = generate_file("bin", 1, 20, 3, tmp_path / "young.jsonl")
    e1 = queue.add(cfg, trained)
    queue.claim(cfg)
    queue.finish(cfg, e1.id, "done")
    e2 = queue.add(cfg, rejected)
    queue.reject(cfg, e2.id, "a reason")
    queue.add(cfg, kept)
    (home / "cache").mkdir(exist_ok=True)
    in_ten_days = time.time() + 10 * DAY
    todo = maintenance.plan(cfg, now=in_ten_days)
    gone = {(r.kind, r.path.name) for r in todo.removals if r.kind != "checkpoint"}
    assert gone == {("done", "trained.jsonl"), ("done", "trained.meta.json")}     # failed/ keeps 30 days
    maintenance.apply(cfg, todo)
    assert not (home / "done" / "trained.jsonl").exists()
    assert (home / "failed" / "rejected.jsonl").exists() and (home / "failed" / "rejected.reason.txt").exists()
    assert [e.name for e in queue.queued(cfg)] == ["young.jsonl"]
    with pytest.raises(ValueError, match="removed from done/ by retention"):
        queue.add(cfg, trained)
    todo = maintenance.plan(cfg, now=time.time() + 40 * DAY)
    assert {r.path.name for r in todo.removals if r.kind == "failed"} == \
        {"rejected.jsonl", "rejected.meta.json", "rejected.reason.txt"}


def test_temp_leftovers_and_orphan_eval_reports_go_by_age(home):
    cfg = cfg_for(home, tmp_hours=24, eval_days=30)
    leftover = home / "checkpoints" / ".tmp-checkpoint-99-20261101-1200-4242"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"x" * 1000)
    (home / "queue" / "normal").mkdir(parents=True)
    stray = home / "queue" / "normal" / ".a.jsonl.tmp-4242"
    stray.write_text("{}")
    (home / "eval").mkdir()
    orphan = home / "eval" / "checkpoint-5-20261001-0000.json"
    orphan.write_text("{}")
    alive = home / "eval" / f"{name_of(home, PROMOTED)}.json"
    alive.write_text("{}")
    assert not [r for r in maintenance.plan(cfg).removals if r.kind in ("tmp", "eval")]    # young: kept
    todo = maintenance.plan(cfg, now=time.time() + 31 * DAY)
    assert {(r.kind, r.path.name) for r in todo.removals if r.kind in ("tmp", "eval")} == {
        ("tmp", leftover.name), ("tmp", stray.name), ("eval", orphan.name)}
    maintenance.apply(cfg, todo)
    assert not leftover.exists() and not stray.exists() and not orphan.exists() and alive.exists()


# ---------------------------------------------------------------- promotion by hand
def test_promote_by_hand_rolls_back_and_the_loop_must_beat_it(home, capsys, monkeypatch):
    monkeypatch.setenv("DOJO_HOME", str(home))
    old = name_of(home, 20)
    assert main(["promote", old, "--reason", "level-2 checkpoints forgot level 1"]) == 0
    assert f"promoted {old} (was {name_of(home, PROMOTED)})" in capsys.readouterr().out
    pointer = promotion.current(home)
    assert pointer["checkpoint"] == old and pointer["by"] == "hand" and pointer["eval"] == LINEAGE[20]
    last = promotion.history(home)[-1]
    assert last["by"] == "hand" and last["reason"] == "by hand: level-2 checkpoints forgot level 1"
    # the next evaluated candidate is judged against the rolled-back checkpoint's own scores
    d = promotion.decide("candidate", {"1": 0.90}, pointer, "bin", 1, [])
    assert not d.promote and "0.950" in d.reason
    assert main(["promote", old, "--reason", "again"]) == 2
    assert "already the promoted checkpoint" in capsys.readouterr().err
    assert main(["promote", name_of(home, 30), "--reason", " "]) == 2


def test_promote_refuses_a_tampered_checkpoint(home, capsys, monkeypatch):
    monkeypatch.setenv("DOJO_HOME", str(home))
    target = home / "checkpoints" / name_of(home, 30) / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    assert main(["promote", name_of(home, 30), "--reason", "x"]) == 2
    assert "does not match its sha256" in capsys.readouterr().err
    assert promotion.current(home)["checkpoint"] == name_of(home, PROMOTED)


# ---------------------------------------------------------------- curriculum.json: both pools at once
def _generate_many(root: str, n: int) -> None:
    cfg = cfg_for(Path(root))
    for _ in range(n):
        steps.next_curriculum_file(cfg)


def _evaluate_many(root: str, n: int) -> None:
    cfg = cfg_for(Path(root))
    for i in range(n):
        steps.record_progress(cfg, "bin", 1, 0.1, f"checkpoint-{i}", i)


def test_curriculum_state_loses_no_update_when_both_pools_write(tmp_path):
    """The training pool counts generated files while the eval pool records evaluations, in one file."""
    ctx = multiprocessing.get_context("spawn")
    n = 150
    procs = [ctx.Process(target=_generate_many, args=(str(tmp_path), n)),
             ctx.Process(target=_evaluate_many, args=(str(tmp_path), n)),
             ctx.Process(target=_generate_many, args=(str(tmp_path), n))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    state = curriculum.load(tmp_path, ["bin"])
    assert state["files_generated"] == 2 * n
    assert len(state["skills"]["bin"]["history"]) == n


# ---------------------------------------------------------------- Prefect's database, training logs
def test_dojo_up_turns_prefects_database_vacuum_on(tmp_path):
    from deployments.stack import stack_env

    cfg = cfg_for(tmp_path / "home", prefect_days=12)
    env = {**stack_env(cfg), "PREFECT_HOME": str(tmp_path / "prefect")}
    probe = ("from prefect.settings import get_current_settings as g; s = g(); v = s.server.services.db_vacuum; "
             "print(sorted(v.enabled_vacuum_types), v.retention_period.days, s.server.events.retention_period.days)")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[0] == "['events', 'flow_runs', 'orphans'] 12 12"


def test_per_step_training_log_rotates(tmp_path):
    cfg = cfg_for(tmp_path / "home", log_max_mb=0.001, log_backups=2)
    log = steps.step_log(cfg)
    for i in range(200):
        log.info("step %d loss 1.2345 lr 1e-4 " + "x" * 40, i)
    files = sorted(p.name for p in (tmp_path / "home" / "logs").iterdir())
    assert files == ["train.log", "train.log.1", "train.log.2"]
    assert all(p.stat().st_size <= 1100 for p in (tmp_path / "home" / "logs").iterdir())
    assert "step 199 " in (tmp_path / "home" / "logs" / "train.log").read_text()


def test_status_prints_space_per_folder(home):
    from deployments import stack

    lines = []
    out = stack.status(cfg_for(home), log=lines.append)
    assert out["usage"]["checkpoints"] > 9 * 1_000_000 and "state" in out["usage"]
    line = next(x for x in lines if x.startswith("storage "))
    assert "checkpoints " in line and "MiB" in line
