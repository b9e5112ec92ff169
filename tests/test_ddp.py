"""Data-parallel training (model/train.py under `accelerate launch`, model/launch.py): two CPU processes (gloo)
training a chunk equal one process training the same global batch with grad_accum doubled — weights, reported
loss, data position — with one checkpoint written by rank 0, an exact resume, and the pipeline's K-process path
(`model.launch.run_chunk`, what tasks/pipeline.py train_chunk calls) resuming the lineage.

Tolerance: both runs do the same float32 operations on the same micro-batches (rank r trains the r-th contiguous
share of the step's rows, the micro-batches one process trains in that place); only the order in which the
gradient is summed differs — one process accumulates micro-batch after micro-batch, DDP adds the two ranks'
accumulated sums in its all-reduce (x2 then /2, exact in binary floating point). With grad_accum 1 per rank that
order is the same (measured: bit-identical weights); 1e-6 absolute on weights of ~1e-1 (lr 3e-3, 6 steps) still
allows summation-order noise and is far below one AdamW update (~lr = 3e-3)."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from dojo import config
from dojo.cli import generate_file
from model import checkpoint as ckpt
from model.launch import LaunchError, free_port, run_chunk
from model.train import train_chunk

SMALL = {
    "data": {"max_length": 128, "val_fraction": 0.1, "val_max_examples": 8},
    "train": {"micro_batch_size": 2, "grad_accum": 1, "warmup_steps": 3, "schedule": "cosine", "total_steps": 12,
              "learning_rate": 0.003, "log_every": 1, "cpu_threads": 1},
}
N = 3   # steps per chunk (4 rows each) on a ~31-row file


def cfg_dict(home, **train):
    data = {k: dict(v) for k, v in SMALL.items()}
    data["train"].update(train)
    data["storage"] = {"root": str(home)}
    return data


def weights(checkpoint):
    return load_file(str(checkpoint / "model.safetensors"))


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return generate_file("bin", 1, 44, 7, tmp_path_factory.mktemp("data") / "bin1.jsonl")


def accelerate_launch(config_file, data_file, steps, processes=2):
    """`accelerate launch --num_processes K -m dojo.cli train` as a user types it (torchrun launcher: accelerate's
    --cpu launcher starts one process; each rank picks the CPU and gloo itself)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", "dojo.cli", "--config", str(config_file), "train",
           str(data_file), "--steps", str(steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")], proc.stderr


def test_two_processes_equal_one_process_with_double_accumulation(tmp_path, data_file, monkeypatch, caplog):
    monkeypatch.delenv("DOJO_HOME")   # the config files say where each run lives
    two = tmp_path / "two.yaml"
    two.write_text(json.dumps(cfg_dict(tmp_path / "ddp")))
    one = config.from_dict(cfg_dict(tmp_path / "single", grad_accum=2), env={})

    # chunk 1: 2 ranks x (2 rows x 1 micro-batch) against 1 process x (2 rows x 2 micro-batches)
    printed, stderr = accelerate_launch(two, data_file, N)
    single = train_chunk(one, data_file, steps=N)
    same = [{k: v for k, v in p.items() if k != "seconds"} for p in printed]
    assert len(same) == 2 and same[0] == same[1], "every rank returns the same result"
    first = ckpt.candidates(tmp_path / "ddp")
    assert [p.name for p in first] == [printed[0]["checkpoint"].rsplit("/", 1)[1]]
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()) == [first[0].name], \
        "exactly one checkpoint directory (rank 0's), no temp or duplicate"
    assert stderr.count("wrote checkpoint-") == 1 and stderr.count(" step 1 (1/3)") == 1, "rank 0 alone logs"
    assert_same_weights(first[0], single.checkpoint)
    assert printed[0]["train_loss"] == pytest.approx(single.train_loss, abs=1e-4)   # printed rounded to 4 places
    a, b = ckpt.read_ledger(first[0]), ckpt.read_ledger(single.checkpoint)
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
    assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)
    assert (a["examples_trained"], a["tokens_trained"]) == (b["examples_trained"], b["tokens_trained"])
    assert a["distributed"] == {"processes": 2, "mode": "ddp"}
    assert b["distributed"] == {"processes": 1, "mode": "none"}
    rng = ckpt.load_state(first[0] / ckpt.STATE_DIR, "rng")
    assert len(rng["ranks"]) == 2, "each rank's RNG state is stored"

    # chunk 2, resumed through the pipeline's path (model.launch.run_chunk launches the 2-process job)
    cfg2 = config.from_dict(cfg_dict(tmp_path / "ddp", processes=2), env={})
    seen, lines = [], []
    second = run_chunk(cfg2, data_file, steps=N, on_progress=seen.append, on_output=lines.append)
    single_seen = []
    single2 = train_chunk(one, data_file, steps=N, on_progress=single_seen.append)
    assert (second.step, single2.step) == (2 * N, 2 * N)
    assert [p["chunk_step"] for p in seen] == [1, 2, 3], "rank 0's progress reaches the parent, once per step"
    assert any("wrote checkpoint-6-" in line for line in lines)
    assert ckpt.read_ledger(second.checkpoint)["parent"] == first[0].name
    assert_same_weights(second.checkpoint, single2.checkpoint)
    assert second.train_loss == pytest.approx(single2.train_loss, rel=1e-6)
    assert [p["loss"] for p in seen] == pytest.approx([p["loss"] for p in single_seen], rel=1e-6), \
        "each logged loss is the global one"
    sa = ckpt.load_state(second.checkpoint / ckpt.STATE_DIR, "trainer")
    sb = ckpt.load_state(single2.checkpoint / ckpt.STATE_DIR, "trainer")
    assert sa == sb and sa["data"]["epoch"] == 0 and sa["data"]["offset"] == 2 * N * 4

    # a different process count resumes everything but RNG continuity, and says so
    with caplog.at_level("WARNING", logger="dojo.train"):
        third = train_chunk(config.from_dict(cfg_dict(tmp_path / "ddp", grad_accum=2), env={}), data_file, steps=1)
    assert third.step == 2 * N + 1
    assert "trained by 2 process(es), this chunk runs 1" in caplog.text and "RNG continuity is lost" in caplog.text


def test_failed_job_raises_with_the_tail_of_its_output(tmp_path):
    cfg = config.from_dict(cfg_dict(tmp_path / "h", processes=2), env={})
    with pytest.raises(LaunchError, match=r"(?s)2-process training chunk on .*missing\.jsonl failed \(exit status "
                                          r"[1-9]\d*\)\ndojo: error: .*missing\.jsonl") as failed:
        run_chunk(cfg, tmp_path / "missing.jsonl", steps=1)
    assert "output lines:" in str(failed.value)
    assert ckpt.candidates(tmp_path / "h") == []


def test_fsdp2_launch_and_its_refusals(tmp_path):
    """FSDP2 itself needs CUDA (tests/test_gpu.py runs it): here, what a CPU box can check — the launch it gets
    (accelerate builds FSDP only for a launched GPU job, one process included), the clear refusals, and the tied
    embeddings it must save once."""
    from model.launch import launch_command, needs_launch
    from model.loading import load_model, pick_runtime
    from model.train import make_accelerator, tied_duplicates

    cfg = config.from_dict(cfg_dict(tmp_path / "h", distributed="fsdp2"), env={})
    assert needs_launch(cfg)
    cmd = launch_command(cfg, tmp_path / "c.yaml", tmp_path / "d.jsonl", tmp_path / "r.json", 2, 12345)
    assert cmd[cmd.index("--use_fsdp"):cmd.index("--use_fsdp") + 5] == ["--use_fsdp", "--fsdp_version", "2",
                                                                         "--num_processes", "1"]
    assert cmd[-2:] == ["--steps", "2"] and "--multi_gpu" not in cmd
    assert not needs_launch(config.from_dict(cfg_dict(tmp_path / "h"), env={}))
    with pytest.raises(ValueError, match=r"train.distributed: 'fsdp2' is not allowed; use ddp when train.optimizer "
                                         r"is not adamw"):
        config.from_dict(cfg_dict(tmp_path / "h", distributed="fsdp2", optimizer="muon"), env={})
    with pytest.raises(ValueError, match="train.distributed is fsdp2, which needs CUDA GPUs .* trains on cpu; set "
                                         "train.distributed: ddp here"):
        make_accelerator(pick_runtime(), "fsdp2")
    model = load_model(config.TINY_MODEL_DIR, pick_runtime())
    assert tied_duplicates(model, fsdp2=True) == {"lm_head.weight"}


def test_each_rank_collates_its_share_and_counts_the_whole_step():
    """make_step_batch for rank r of K: the r-th contiguous share of the step's rows, as the very micro-batches
    one process collates there; tokens, examples and row tokens count the whole step (the loss divisor)."""
    from model.chat import tokenize_example
    from model.loading import load_tokenizer
    from model.packing import pack
    from model.train import make_step_batch
    from skills import bin as B

    tok = load_tokenizer(config.TINY_MODEL_DIR)
    rows = pack([tokenize_example(B.to_chat(p)["messages"], tok) for p in B.generate(1, 40, 5)], 96)[:8]
    one = make_step_batch(rows, 2, tok.pad_token_id)
    shares = [make_step_batch(rows, 2, tok.pad_token_id, rank=r, processes=2) for r in (0, 1)]
    micro = [m for s in shares for m in s.micro]
    assert len(micro) == len(one.micro) == 4
    for a, b in zip(micro, one.micro):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for s in shares:
        assert (s.tokens, s.examples, s.row_tokens) == (one.tokens, one.examples, one.row_tokens)
    with pytest.raises(AssertionError, match="7 rows do not split into 2 equal shares"):
        make_step_batch(rows[:7], 2, tok.pad_token_id, rank=0, processes=2)


def test_a_launched_job_ends_when_its_flow_process_is_killed(tmp_path):
    """A Prefect worker SIGKILLs a cancelled or zombie flow run's process: the training job it launched must not
    keep running (and writing checkpoints) without it. The child here is started exactly as launch_chunk starts
    the accelerate launcher."""
    import os
    import signal
    import time

    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "from model.launch import _end_with_parent\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], "
        "preexec_fn=_end_with_parent)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        # the orphan is reparented to init (or a subreaper: pytest is not one); a zombie counts as ended
        try:
            if open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        except OSError:
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the launched job outlived its SIGKILLed parent")
