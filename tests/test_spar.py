"""Sparring (dojo/spar.py, skills/sparring.py), its claim-time guards (stale files retired, the share cap) and the
GPU-idle gate (dojo/gpu_gate.py), on a real tiny checkpoint trained a few steps (wrong on nearly everything).

The examples are checked against an independent BIN solver written here with plain Python ints; the model's
answers are re-generated from the checkpoint; eval problems are compared with the skills' fixed eval sets; the
evaluate flow's hand-off to spar runs under prefect_test_harness."""
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

from dojo import config, gate, gpu_gate, queue, spar, steps
from dojo.generate import generate_file
from dojo.sidecar import read_sidecar
from skills import bin as bin_skill
from skills import curriculum, sparring
from skills import syllo as syllo_skill

SETTINGS = {"data": {"max_length": 256}, "train": {"micro_batch_size": 2, "warmup_steps": 2},
            "eval": {"batch_size": 64, "max_new_tokens": 24}, "curriculum": {"examples_per_file": 40}}


# ---------------------------------------------------------------- an independent BIN level-1 solver
DIGIT = {"\u24ea": "0", "\u2460": "1"}


def circled_to_int(text: str) -> int:
    return int("".join(DIGIT[c] for c in text), 2)


def int_to_circled(n: int) -> str:
    return "".join("\u2460" if b == "1" else "\u24ea" for b in format(n, "b"))


def solve(problem_prompt: str) -> tuple[str, str]:
    """(expression, result) of a level-1 prompt 'Compute: add(①⓪, ①)' from the operands, plain ints."""
    m = re.fullmatch(r"Compute: (add|subtract)\(([\u24ea\u2460]+), ([\u24ea\u2460]+)\)", problem_prompt)
    assert m, problem_prompt
    a, b = circled_to_int(m.group(2)), circled_to_int(m.group(3))
    value = a + b if m.group(1) == "add" else a - b
    assert value >= 0
    return f"{m.group(1)}({m.group(2)}, {m.group(3)})", int_to_circled(value)


def right(answer: str, expression: str, result: str) -> bool:
    """An answer is right when its first non-empty line is '[expression] = result' (whitespace ignored)."""
    line = next((ln for ln in answer.splitlines() if ln.strip()), "")
    flat = "".join(line.split())
    return flat in ("".join(expression.split()) + "=" + result, "=" + result)


def split_review(user: str) -> tuple[str, str, str]:
    """(problem prompt, proposed answer, question) of a review prompt (the layout in docs/data-formats.md)."""
    m = re.fullmatch(r"(Compute: [^\n]+)\n\nProposed answer:\n(.*)\n\n(Is this answer correct\?|Find the correct "
                     r"solution\.)", user, re.DOTALL)
    assert m, user
    return m.group(1), m.group(2), m.group(3)


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_torch_thread):
    """A storage root with two real checkpoints of the tiny model on BIN level 1: step 3 and step 5."""
    from model.train import train_chunk

    root = tmp_path_factory.mktemp("spar-root")
    cfg = config.from_dict(SETTINGS, env={"DOJO_HOME": str(root)})
    data = generate_file("bin", 1, 60, 7, root / "in" / "bin1.jsonl")
    first = train_chunk(cfg, data, steps=3).checkpoint
    second = train_chunk(cfg, data, steps=2).checkpoint
    return root, first, second


def make_cfg(tmp_path, trained, checkpoints=("first",), **spar_cfg):
    """A config on this test's own root holding copies of the named trained checkpoints."""
    root_src, first, second = trained
    paths = {"first": first, "second": second}
    settings = {**SETTINGS, "spar": spar_cfg}
    tmp_path.mkdir(parents=True, exist_ok=True)
    os.environ["DOJO_HOME"] = str(tmp_path / "home")     # this config's own root (conftest's monkeypatch restores it)
    path = tmp_path / "dojo-test.yaml"
    path.write_text(yaml.safe_dump(settings))
    cfg = config.load(str(path))
    for name in checkpoints:
        shutil.copytree(paths[name], cfg.root / "checkpoints" / paths[name].name)
    return cfg, str(path)


def queued_spar(cfg):
    found = [e for e in queue.list_entries(cfg) if e.state == "queued" and e.name.startswith("spar_")]
    assert len(found) == 1, found
    return found[0]


# ---------------------------------------------------------------- the examples
def test_wrong_answers_become_three_examples_checked_by_an_independent_solver(tmp_path, trained):
    from model.checkpoint import read_ledger
    from model.evaluate import Generator

    cfg, _ = make_cfg(tmp_path, trained)
    name = trained[1].name
    out = spar.spar(cfg, name, problems=30)
    assert out["asked"] == 30 and out["missed"] >= 20, out          # 3 steps of training: wrong on nearly all
    assert out["accepted"] and out["examples"] == 3 * out["missed"]
    entry = queued_spar(cfg)
    assert entry.priority == "high" and entry.id == out["queued_id"] and out["file"] == str(entry.path)
    records = [json.loads(line) for line in entry.path.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 3 * out["missed"]

    missed = []
    for i in range(0, len(records), 3):
        check, solve_it, confirm = (r["messages"] for r in records[i:i + 3])
        assert [m["role"] for m in check] == [m["role"] for m in solve_it] == [m["role"] for m in confirm] == \
            ["user", "assistant"]
        problem, answer, question = split_review(check[0]["content"])
        expression, result = solve(problem)
        assert question == "Is this answer correct?" and check[1]["content"] == "It is incorrect."
        assert not right(answer, expression, result), f"{answer!r} is right for {problem}"
        assert split_review(solve_it[0]["content"]) == (problem, answer, "Find the correct solution.")
        assert solve_it[1]["content"] == f"{expression} = {result}"          # the golden answer
        fresh, shown, question = split_review(confirm[0]["content"])
        assert question == "Is this answer correct?" and confirm[1]["content"] == "It is correct."
        assert fresh != problem and right(shown, *solve(fresh))
        missed.append((problem, answer))
    problems = [p for p, _ in missed]
    fresh_ones = {split_review(r["messages"][0]["content"])[0] for r in records[2::3]}
    assert len(set(problems)) == len(problems) and not fresh_ones & set(problems)

    meta = read_sidecar(entry.path)
    assert meta["generator"] == f"spar@{sparring.GENERATOR_VERSION}" and meta["spec"] == "chat_sft_v1"
    assert (meta["skill"], meta["level"]) == ("bin", 1)
    block = meta["spar"]
    assert block["checkpoint"] == name and block["step"] == 3 and block["seed"] == sparring.seed_for(name, 3)
    assert (block["asked"], block["missed"]) == (30, out["missed"]) and block["eval_overlap"] is True
    assert meta["validation"]["outcome"] == "accepted" and meta["validation"]["verdict_key"]   # through the gate
    assert meta["queue"]["priority"] == "high"

    # the answers are the checkpoint's own: the same problems asked again give the same greedy outputs
    asked, _ = sparring.draw_problems(bin_skill, 1, 30, block["seed"])
    path = cfg.root / "checkpoints" / name
    gen = Generator.load(cfg, path, read_ledger(path))
    again = gen.answer([bin_skill.to_chat(p)["messages"][:1] for p in asked], cfg.eval.max_new_tokens)
    by_prompt = dict(zip((p.prompt for p in asked), again))
    assert [(p, by_prompt[p].strip() or sparring.EMPTY_ANSWER) for p, _ in missed] == missed
    assert sum(not right(o, *solve(p.prompt)) for p, o in zip(asked, again)) == out["missed"]

    # the same checkpoint sparred again: same seed, same answers, nothing new queued
    assert spar.spar(cfg, name, problems=30)["queued_id"] == entry.id
    assert len([e for e in queue.list_entries(cfg) if e.name.startswith("spar_")]) == 1


def test_no_wrong_answers_queue_nothing(tmp_path, trained, monkeypatch):
    """A model that answers everything right (its generation replaced by the golden answers) gets no file."""
    from model import evaluate

    def perfect(self, messages, max_new_tokens):
        return [bin_skill.parse_prompt(m[0]["content"]).completion for m in messages]

    monkeypatch.setattr(evaluate.Generator, "answer", perfect)
    cfg, _ = make_cfg(tmp_path, trained)
    out = spar.spar(cfg, trained[1].name, problems=20)
    assert out["missed"] == 0 and out["file"] is None and out["queued_id"] is None
    assert "no sparring file queued" in out["message"]
    assert not queue.list_entries(cfg)


def test_dojo_spar_command(tmp_path, trained, capsys):
    from dojo import cli

    cfg, cfg_path = make_cfg(tmp_path, trained)
    assert cli.main(["spar", "latest", "--problems", "8", "--config", cfg_path]) == 0
    out = capsys.readouterr().out
    assert "/8 bin level-1 problems wrong -> " in out
    assert "queued at high priority as " + queued_spar(cfg).id in out
    assert cli.main(["spar", "latest", "--level", "9", "--config", cfg_path]) == 2
    assert "--level 9: bin has levels [1, 2, 3, 4, 5, 6, 7]" in capsys.readouterr().err


def test_problems_never_come_from_held_out_eval_sets():
    for skill, levels in ((bin_skill, (2, 3, 4, 5)), (syllo_skill, (1, 3))):
        for level in levels:
            held_out = {p.key for p in skill.eval_problems(level)}
            asked, fresh = sparring.draw_problems(skill, level, 60, 12345)
            keys = [p.key for p in asked + fresh]
            assert len(asked) == len(fresh) == 60 and len(set(keys)) == 120, (skill.SKILL, level)
            assert not set(keys) & held_out, (skill.SKILL, level)
    # BIN level 1: the eval set is the whole 187-problem space, so nothing can be held out; sparring draws from
    # that space (as the curriculum does, and the eval report says it overlaps training), asks at most half of it
    # and confirms with the other half
    space = {p.key for p in bin_skill.eval_problems(1)}
    assert len(space) == 187 and bin_skill.covers_space(1)
    asked, fresh = sparring.draw_problems(bin_skill, 1, 500, 99)
    assert len(asked) == len(fresh) == 93
    assert {p.key for p in asked} | {p.key for p in fresh} <= space
    assert not {p.key for p in asked} & {p.key for p in fresh}
    assert [p.key for p in sparring.draw_problems(bin_skill, 1, 500, 99)[0]] == [p.key for p in asked]  # seeded


# ---------------------------------------------------------------- guards at claim time
def test_stale_by_steps_is_retired_to_done_with_the_reason(tmp_path, trained):
    cfg, _ = make_cfg(tmp_path, trained, ("first", "second"), max_age_steps=1, max_share=1.0, mix=False)
    spar.spar(cfg, trained[1].name, problems=10)                  # step 3; the newest checkpoint is at step 5
    claimed = steps.claim(cfg)
    assert claimed is not None and claimed.name.startswith("spar_")
    outcome = steps.check_claimed(cfg, claimed)
    assert not outcome.accepted and outcome.train_file is None
    assert "step 5" in outcome.report and "spar.max_age_steps=1" in outcome.report
    (done,) = [e for e in queue.list_entries(cfg) if e.state == "done"]
    assert done.id == claimed.id
    reason = done.path.with_name(done.path.stem + ".reason.txt").read_text()
    assert "stale sparring data" in reason and "step 5" in reason
    assert read_sidecar(done.path)["queue"]["history"][-1]["event"] == "retired"
    assert "done (1)" in queue.format_list(queue.list_entries(cfg))

    # at the boundary (5 - 3 = 2 steps <= max_age_steps 2) it is not stale
    cfg2, _ = make_cfg(tmp_path / "b", trained, ("first", "second"), max_age_steps=2, max_share=1.0, mix=False)
    spar.spar(cfg2, trained[1].name, problems=10)
    assert spar.staleness(cfg2, read_sidecar(queued_spar(cfg2).path)) is None


def test_stale_by_level_is_retired(tmp_path, trained):
    cfg, _ = make_cfg(tmp_path, trained, max_age_steps=1000, max_share=1.0, mix=False)
    spar.spar(cfg, trained[1].name, problems=10)                  # level 1
    state = curriculum.load(cfg.root, ["bin"])
    state["skills"]["bin"]["level"] = 1                            # level 1 mastered: the skill trains level 2
    curriculum.save(cfg.root, state)
    claimed = steps.claim(cfg)
    outcome = steps.check_claimed(cfg, claimed)
    assert not outcome.accepted and "bin level 1" in outcome.report and "trains level 2" in outcome.report
    assert [e.state for e in queue.list_entries(cfg)] == ["done"]


def test_share_cap_makes_sparring_wait_and_the_curriculum_train(tmp_path, trained):
    cfg, _ = make_cfg(tmp_path, trained, max_share=0.25, share_window=10, mix=False)
    spar.spar(cfg, trained[1].name, problems=10)
    spar_entry = queued_spar(cfg)
    curriculum_file = generate_file("bin", 1, 40, 3, tmp_path / "curr" / "curriculum_bin_l1.jsonl")
    curriculum_id = gate.admit(cfg, curriculum_file).entry.id

    for spar_chunk in (False, False, False, True):                 # sparring 1/4 now; one more would be 2/5
        spar.record_chunk(cfg, "x", 100, 100 if spar_chunk else 0, None)
    assert spar.share(cfg)["share"] == pytest.approx(0.25) and spar.over_cap(cfg)
    claimed = steps.claim(cfg)
    assert claimed.id == curriculum_id                              # the high-priority sparring file waits
    assert queue.find(cfg, spar_entry.id).state == "queued"
    queue.release(cfg, claimed.id)

    for _ in range(6):                                              # window of 10: 1 sparring chunk in 10
        spar.record_chunk(cfg, "y", 100, 0, None)
    assert not spar.over_cap(cfg)                                   # one more: 200 / 1100 = 0.18
    # a sparring chunk is its file (spar.epochs passes), so the file's own size is what counts
    assert spar.over_cap(cfg, {"example_count": 300})               # (100 + 300) / 1300 = 0.31
    assert not spar.over_cap(cfg, {"example_count": 150})           # (100 + 150) / 1150 = 0.22
    assert steps.claim(cfg).id == spar_entry.id                     # high priority first
    assert json.loads((cfg.root / spar.STREAM).read_text())["chunks"][-1]["file"] == "y"   # durable, in state/


def test_a_finished_chunk_is_recorded_for_the_share(tmp_path, trained):
    from model.checkpoint import read_ledger

    cfg, _ = make_cfg(tmp_path, trained, max_share=1.0)
    entry = gate.admit(cfg, trained[0] / "in" / "bin1.jsonl").entry     # the file the checkpoint was trained on
    claimed = steps.claim(cfg)
    outcome = steps.check_claimed(cfg, claimed)
    steps.finish_trained(cfg, claimed, outcome)
    ledger = read_ledger(cfg.root / "checkpoints" / trained[1].name)
    (chunk,) = json.loads((cfg.root / spar.STREAM).read_text())["chunks"]
    assert chunk == {"file": entry.id, "examples": ledger["examples_trained"], "spar_examples": 0, "spar": False,
                     "checkpoint": trained[1].name} and chunk["examples"] > 0
    assert spar.share(cfg)["share"] == 0.0 and queue.find(cfg, entry.id).state == "done"


def test_a_sparring_file_trains_one_pass_not_a_pipeline_chunk(tmp_path, trained):
    """A sparring file's chunk is spar.epochs passes over it; a curriculum file keeps the pipeline's chunk."""
    import math

    from model.checkpoint import read_ledger
    from model.data import prepare
    from model.loading import load_tokenizer
    from model.train import train_chunk

    cfg, _ = make_cfg(tmp_path, trained, max_share=1.0, mix=False)
    spar.spar(cfg, trained[1].name, problems=10)
    claimed = steps.claim(cfg)
    assert claimed.spar and claimed.name.startswith("spar_")
    outcome = steps.check_claimed(cfg, claimed)
    chunk_cfg, chunk_steps = steps.chunk_plan(cfg, claimed, 100)
    assert chunk_steps is None and chunk_cfg.train.epochs == cfg.spar.epochs == 1.0
    rows = prepare(chunk_cfg, outcome.train_file, load_tokenizer(cfg.model.name_or_path)).n_rows
    ledger = read_ledger(train_chunk(chunk_cfg, outcome.train_file, chunk_steps).checkpoint)
    assert ledger["steps_in_chunk"] == math.ceil(rows / cfg.train.micro_batch_size) < 100, (rows, ledger)

    curriculum = steps.Claimed("c", "curriculum_bin_l1.jsonl", claimed.path, claimed.sha256, "bin", 1)
    assert steps.chunk_plan(cfg, curriculum, 100) == (cfg, 100)


def test_over_the_cap_with_only_sparring_queued_the_curriculum_is_generated(tmp_path, trained):
    cfg, _ = make_cfg(tmp_path, trained, max_share=0.1, mix=False)
    spar.spar(cfg, trained[1].name, problems=10)
    spar_entry = queued_spar(cfg)
    assert spar.over_cap(cfg)                                       # nothing trained yet: any sparring is 100%
    claimed = steps.claim(cfg)
    assert claimed is not None and claimed.name.startswith("curriculum_bin_l1")
    assert queue.find(cfg, spar_entry.id).state == "queued"


# ---------------------------------------------------------------- the GPU-idle gate
class FakeTime:
    def __init__(self):
        self.now = 0.0
        self.slept = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def gate_cfg(**kw):
    return config.from_dict({"spar": {"idle_samples": 3, "idle_sample_seconds": 1.0, "idle_retry_seconds": 30.0,
                                      "idle_timeout_seconds": 300.0, **kw}}, env={})


def test_gate_waits_while_busy_then_passes():
    busy, idle = gpu_gate.Reading(1, 85.0, 0.9), gpu_gate.Reading(1, 5.0, 0.8)
    other_gpu_busy = gpu_gate.Reading(0, 100.0, 0.0)                 # the training GPU: not watched
    readings = iter([busy, idle, idle, busy, idle, idle, idle])
    t, waits = FakeTime(), []
    result = gpu_gate.wait_until_idle(gate_cfg(), lambda: [other_gpu_busy, next(readings)], gpus=[1],
                                      on_wait=waits.append, sleep=t.sleep, clock=t.clock)
    assert result.passed and result.waits == 2 and len(waits) == 2
    assert "GPU 1: utilisation 85%" in waits[0] and "needs utilisation < 40%" in waits[0]
    assert t.slept == [30.0, 1.0, 1.0, 30.0, 1.0, 1.0] and result.waited_seconds == 64.0
    # too little free memory is busy too (>= 30% free needed)
    low_memory = iter([[gpu_gate.Reading(1, 0.0, 0.2)], [idle], [idle], [idle]])
    result = gpu_gate.wait_until_idle(gate_cfg(), lambda: next(low_memory), gpus=[1], on_wait=waits.append,
                                      sleep=FakeTime().sleep, clock=FakeTime().clock)
    assert result.waits == 1 and "20% memory free" in waits[-1]


def test_gate_gives_up_after_the_timeout():
    t, waits = FakeTime(), []
    with pytest.raises(gpu_gate.GpuBusy, match=r"gave up after 300s \(11 busy readings; "
                                                r"spar.idle_timeout_seconds=300\): GPU 1: utilisation 99%"):
        gpu_gate.wait_until_idle(gate_cfg(), lambda: [gpu_gate.Reading(1, 99.0, 0.9)], gpus=[1],
                                 on_wait=waits.append, sleep=t.sleep, clock=t.clock)
    assert len(waits) == 10 and t.now == 300.0                      # a wait every 30 s, then it gives up


def test_gate_passes_without_a_gpu_and_watches_the_jobs_gpus():
    result = gpu_gate.wait_until_idle(gate_cfg(), lambda: None, on_wait=pytest.fail)
    assert result.passed and "no NVIDIA GPU" in result.message
    assert gpu_gate.visible_gpus({"CUDA_VISIBLE_DEVICES": "1,2"}) == [1, 2]
    assert gpu_gate.visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-5d2c"}) is None
    cfg = config.from_dict({"pipeline": {"eval_gpus": "1,3"}}, env={})
    assert gpu_gate.all_slot_names(cfg) == ["dojo-background-gpu-1", "dojo-background-gpu-3"]
    assert gpu_gate.slot_names(cfg, {"CUDA_VISIBLE_DEVICES": "3"}) == ["dojo-background-gpu-3"]


def test_spar_config_is_checked():
    for bad, key in (({"after": "sometimes"}, "spar.after"), ({"max_share": 1.5}, "spar.max_share"),
                     ({"idle_samples": 0}, "spar.idle_samples"), ({"problems": 0}, "spar.problems")):
        with pytest.raises(ValueError, match=re.escape(f"config {key}:")):
            config.from_dict({"spar": bad}, env={})
    assert config.from_dict({}, env={}).spar.after == "every"


# ---------------------------------------------------------------- the flows, under prefect_test_harness
def read_artifacts(keys):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))


@pytest.mark.slow
def test_evaluate_flow_hands_off_to_spar(harness, tmp_path, trained):
    from flows.evaluate_checkpoint import checkpoint as evaluate_flow

    from prefect import get_client
    from prefect.settings import PREFECT_API_URL

    from deployments.stack import background_limits

    cfg, cfg_path = make_cfg(tmp_path, trained, problems=20)
    # what `dojo up` does: one limit (1 slot) per eval GPU, through the prefect CLI against this server
    names = background_limits(cfg, {"PREFECT_API_URL": PREFECT_API_URL.value()}, log=lambda _: None)
    assert names == gpu_gate.all_slot_names(cfg) == ["dojo-background-gpu-1"]  # pipeline.eval_gpus "1"
    name = trained[1].name
    out = evaluate_flow(name, config=cfg_path, hand_off="inline")
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name("dojo-background-gpu-1")
    assert limit.limit == 1 and limit.active_slots == 0                          # taken by spar, then released

    # one background job per eval GPU: while another job holds the GPU's slot, sparring does not start
    from prefect.concurrency.sync import concurrency

    from flows.spar_checkpoint import checkpoint as spar_flow

    cfg_busy, busy_path = make_cfg(tmp_path / "busy", trained, idle_timeout_seconds=2)
    with concurrency("dojo-background-gpu-1", occupy=1, strict=True):
        with pytest.raises(TimeoutError, match="acquire concurrency slots timed out"):
            spar_flow(name, config=busy_path)
    assert not queue.list_entries(cfg_busy)
    assert out["checkpoint"] == name and out["spar"]["checkpoint"] == name and out["spar"]["missed"] > 0
    entry = queued_spar(cfg)
    assert entry.priority == "high" and entry.id == out["spar"]["queued_id"]
    found = read_artifacts(["spar", "gpu-gate"])
    assert any(a.key == "spar" and name in a.data and "queued at high priority" in a.data for a in found)
    assert any(a.key == "gpu-gate" and ("no NVIDIA GPU" in a.data or "GPU idle" in a.data) for a in found)
    for after, promoted, wanted in (("every", False, True), ("promoted", False, False), ("promoted", True, True),
                                    ("off", True, False)):
        assert spar.wants_spar(config.from_dict({"spar": {"after": after}}, env={}), promoted) is wanted


@pytest.mark.slow
def test_gate_wait_is_visible_in_the_run(harness, tmp_path):
    from prefect import flow

    from tasks.spar import wait_for_idle_gpu

    readings = iter([[gpu_gate.Reading(0, 90.0, 0.5)], [gpu_gate.Reading(0, 1.0, 0.9)]])

    @flow(name="gate-probe")
    def gated():
        cfg = config.from_dict({"spar": {"idle_samples": 1, "idle_retry_seconds": 0.01}}, env={})
        return wait_for_idle_gpu(cfg, probe=lambda: next(readings))

    result = gated()
    assert result["passed"] and result["waits"] == 1
    artifact = [a for a in read_artifacts(["gpu-gate"]) if "1 busy verdict" in a.data]
    assert artifact, "the gpu-gate artifact does not show the wait"


# ---------------------------------------------------------------- mixed into curriculum files (spar.mix, the default)
def spar_rows(path) -> list[str]:
    return [line for line in Path(path).read_text().splitlines() if "Proposed answer:" in line]


def test_sparring_is_mixed_into_a_high_priority_curriculum_file(tmp_path, trained):
    """spar.mix: the queued sparring file's examples go into the next generated curriculum file (at most max_share
    of it, whole triples), that file is claimed first, and the sparring file is retired to done/ naming it."""
    cfg, _ = make_cfg(tmp_path, trained, max_share=0.25)
    assert cfg.spar.mix
    result = spar.spar(cfg, trained[1].name, problems=40)
    spar_entry = queued_spar(cfg)
    waiting = generate_file("bin", 1, 40, 3, tmp_path / "curr" / "curriculum_bin_l1.jsonl")
    waiting_id = gate.admit(cfg, waiting).entry.id                  # an ordinary curriculum file queued before

    assert steps.top_up(cfg) == []              # low_water 1: the waiting file counts, the sparring file does not
    steps.generate_for_curriculum(cfg)          # the next generated file carries the sparring examples
    claimed = steps.claim(cfg)
    assert claimed.name.startswith("curriculum_bin_l1") and claimed.id != waiting_id and not claimed.spar
    meta = read_sidecar(claimed.path)
    params, count = meta["params"], cfg.curriculum.examples_per_file
    budget = int(count * 0.25) // 3 * 3
    assert params["spar_count"] == min(result["examples"], budget) == len(spar_rows(claimed.path))
    assert params["spar_count"] % 3 == 0 and meta["example_count"] == count
    (taken,) = params["spar_mixed"]
    assert taken["id"] == spar_entry.id and taken["sha256"] == spar_entry.sha256
    assert taken["checkpoint"] == trained[1].name and taken["taken"] == params["spar_count"]
    assert meta["queue"]["priority"] == "high"

    done = queue.find(cfg, spar_entry.id)
    assert done.state == "done"
    reason = done.path.with_name(done.path.stem + ".reason.txt").read_text()
    assert f"mixed into curriculum file {claimed.id}" in reason
    assert queue.find(cfg, waiting_id).state == "queued"            # still there, trained next
    queue.release(cfg, claimed.id)
    assert steps.claim(cfg).id == claimed.id                        # high priority: still ahead of it

    # the mixed rows are the sparring file's own lines, byte for byte
    assert set(spar_rows(claimed.path)) <= set(done.path.read_text().splitlines())
    # the trained chunk counts its mixed share for the cap
    spar.record_chunk(cfg, claimed.id, 1000, spar.mixed_examples(meta, 1000), None)
    assert spar.share(cfg)["share"] == pytest.approx(params["spar_count"] / count, abs=1e-3)


def test_a_stale_sparring_file_is_retired_not_mixed(tmp_path, trained):
    cfg, _ = make_cfg(tmp_path, trained, ("first", "second"), max_age_steps=1)
    spar.spar(cfg, trained[1].name, problems=10)                  # step 3; the newest checkpoint is at step 5
    spar_entry = queued_spar(cfg)
    claimed = steps.claim(cfg)
    assert claimed.name.startswith("curriculum_bin_l1") and "spar_count" not in read_sidecar(claimed.path)["params"]
    assert read_sidecar(claimed.path)["queue"]["priority"] == "normal"
    done = queue.find(cfg, spar_entry.id)
    assert done.state == "done" and "stale sparring data" in \
        done.path.with_name(done.path.stem + ".reason.txt").read_text()


def test_a_rejected_mixed_file_puts_the_sparring_file_back(tmp_path, trained, monkeypatch):
    cfg, _ = make_cfg(tmp_path, trained)
    spar.spar(cfg, trained[1].name, problems=10)
    spar_entry = queued_spar(cfg)

    def broken(*a, **kw):
        raise OSError("disk full")

    monkeypatch.setattr(gate, "admit", broken)
    with pytest.raises(OSError, match="disk full"):
        steps.generate_for_curriculum(cfg)
    assert queue.find(cfg, spar_entry.id).state == "queued"         # nothing lost: it waits for the next file


def test_generated_sparring_data_never_overtakes_a_queued_file(tmp_path, trained):
    """A file already queued (a user's, or one returned after a crashed chunk) trains before the sparring files
    are mixed into a generated one: they wait, and top-up does not count them."""
    cfg, _ = make_cfg(tmp_path, trained)
    spar.spar(cfg, trained[1].name, problems=10)
    spar_entry = queued_spar(cfg)
    user = gate.admit(cfg, generate_file("bin", 1, 40, 3, tmp_path / "user" / "mine.jsonl")).entry
    assert steps.claim(cfg).id == user.id
    assert queue.find(cfg, spar_entry.id).state == "queued"
    assert steps.top_up(cfg)                                        # only sparring left queued: generate, mixing it
    assert queue.find(cfg, spar_entry.id).state == "done"
